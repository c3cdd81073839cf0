"""Seeded sampling reads one random stream per sequence: the same prompt and seed give the same text
alone, in a batch, in another order, on either scheduler; copies of one prompt in a call differ."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rsd_core import RewardGuidedDecoder, RSDConfig
from rsd_core.backends.hf import HFGenerator
from rsd_core.config import SamplingConfig
from rsd_core.eval.datasets import toy_examples
from rsd_core.sampling import Draws, sample_next

WEIGHTS = Path(__file__).resolve().parents[1] / "rsd_core" / "toy" / "weights"
QUESTIONS = [e.question for e in toy_examples(4, seed=515)]


def trace(result):
    return [(s.source, s.accepted, s.token_ids) for s in result.steps]


@pytest.fixture(scope="module", params=["native", "transformers"])
def decoder(request, toy):
    e = request.param
    return RewardGuidedDecoder(HFGenerator.from_pretrained(str(WEIGHTS / "draft"), engine=e),
                               HFGenerator.from_pretrained(str(WEIGHTS / "target"), engine=e), toy.reward)


@pytest.mark.parametrize("threshold, weighting, scheduler", [
    (0.5, "clip", "auto"),        # RSD, stochastic accept decisions, no lockstep (native engine)
    (0.5, "clip", "lockstep"),
    (0.0, "binary", "auto"),      # draft only
    (1.0, "binary", "auto"),      # target only, steps back to back
])
def test_a_seeded_sequence_samples_the_same_text_whatever_it_runs_with(decoder, threshold, weighting, scheduler):
    cfg = RSDConfig(seed=11, threshold=threshold, weighting=weighting, scheduler=scheduler, max_new_tokens=40,
                    draft_sampling=SamplingConfig(temperature=1.0), target_sampling=SamplingConfig(temperature=0.8))
    alone = [trace(decoder.generate(q, config=cfg)[0]) for q in QUESTIONS]
    together = [trace(r) for r in decoder.generate(QUESTIONS, config=cfg)]
    backwards = [trace(r) for r in decoder.generate(QUESTIONS[::-1], config=cfg)][::-1]
    assert together == alone
    assert backwards == alone
    other = [trace(r) for r in decoder.generate(QUESTIONS, config=cfg.model_copy(update={"seed": 12}))]
    assert other != alone  # the seed matters


def test_copies_of_one_prompt_in_a_call_sample_apart(decoder):
    cfg = RSDConfig(seed=5, threshold=0.0, max_new_tokens=40, draft_sampling=SamplingConfig(temperature=1.0))
    first, second = decoder.generate([QUESTIONS[0], QUESTIONS[0]], config=cfg)
    assert trace(first) != trace(second)
    # ...and each copy is reproducible on its own position among the copies
    again = decoder.generate([QUESTIONS[1], QUESTIONS[0], QUESTIONS[0]], config=cfg)
    assert [trace(r) for r in again[1:]] == [trace(first), trace(second)]


def test_streams_draw_each_token_with_its_probability():
    """The exponential race over the stream's uniforms samples the filtered distribution exactly."""
    p = torch.tensor([0.05, 0.15, 0.3, 0.5])
    draws = Draws.of(list(range(4000)), [0] * 4000, torch.device("cpu"))
    counts = torch.zeros(4)
    for _ in range(5):
        tok = sample_next(p.log().expand(4000, 4), SamplingConfig(temperature=1.0), draws)
        counts += torch.bincount(tok, minlength=4)
        draws.advance()
    freq = counts / counts.sum()
    assert torch.allclose(freq, p, atol=0.015), freq
    # a row's numbers depend on its key and count only
    a = Draws.of([3, 9], [2, 7], torch.device("cpu")).uniform(50)
    b = Draws.of([9], [7], torch.device("cpu")).uniform(50)
    assert torch.equal(a[1], b[0]) and not torch.equal(a[0], a[1])


def test_sampled_rsd_writes_the_same_with_or_without_lockstep(decoder):
    """Each sequence's draws and decisions are its own, so dropping the rounds changes nothing, even
    where the target interrupts the draft's batch mid-step (a rejected step's rewrite verifies it
    against distributions drawn across two decodes)."""
    cfg = RSDConfig(seed=3, threshold=0.6, weighting="clip", max_new_tokens=60, max_step_tokens=30,
                    draft_sampling=SamplingConfig(temperature=1.0), target_sampling=SamplingConfig(temperature=0.8))
    rounds = decoder.generate(QUESTIONS, config=cfg.model_copy(update={"scheduler": "lockstep"}))
    free = decoder.generate(QUESTIONS, config=cfg)
    assert [trace(r) for r in free] == [trace(r) for r in rounds]
    assert sum(r.stats.rewritten_steps for r in free) > 0
