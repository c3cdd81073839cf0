"""A failure that belongs to one sequence of a batch ends that sequence only.

The reward of one question fails (its PRM input cannot be built, or a reward model returns NaN for
it): that sequence ends with an ``on_error`` event, every other sequence of the batch finishes with
exactly the text and rewards it gets alone, the call raises the failure at its end, and nothing is
left in any model. Through ``ChatRSD``'s batching, only the caller who asked that question hears of it.
"""

from __future__ import annotations

import math

import pytest

from rsd_core import RewardGuidedDecoder, RSDConfig
from rsd_core.errors import RewardValueError
from rsd_core.eval.datasets import toy_examples
from rsd_core.rewards.base import RewardModel
from rsd_integrations.langchain import ChatRSD

QUESTIONS = [e.question for e in toy_examples(6, seed=909)]
BAD = QUESTIONS[2]


class _Collect:
    def __init__(self):
        self.ends, self.errors = {}, {}

    def on_end(self, result):
        self.ends[result.index] = result

    def on_error(self, event):
        self.errors[event.sequence_index] = event.error


class _NaNFor(RewardModel):
    """The toy PRM, except that it returns NaN for one question's steps."""

    def __init__(self, inner, question):
        self.inner, self.question, self.bad = inner, question, set()
        self.name = "nan-for-one"

    def start(self, seq, conversation):
        self.inner.start(seq, conversation)
        if conversation[-1]["content"] == self.question:
            self.bad.add(seq)

    def score(self, seqs, steps):
        values = self.inner.score(seqs, steps)
        return [math.nan if s in self.bad else v for s, v in zip(seqs, values)]

    def rollback(self, seqs):
        self.inner.rollback(seqs)

    def release(self, seqs):
        self.inner.release(seqs)
        self.bad -= set(seqs)


def _idle(dec):
    prm = dec.reward.inner if isinstance(dec.reward, _NaNFor) else dec.reward
    return not dec.draft.cached.states and not dec.target.cached.states and not prm.cached.states


def _unreadable(prm, monkeypatch):
    """The PRM cannot take BAD's steps in: it raises mid-batch, after other rows were appended."""
    bad = set()
    start, append = prm.start, prm.cached.append

    def start_(seq, conversation):
        if conversation[-1]["content"] == BAD:
            bad.add(seq)
        start(seq, conversation)

    def append_(seq, ids):
        if seq in bad:
            raise ValueError("this question cannot be read")
        append(seq, ids)

    monkeypatch.setattr(prm, "start", start_)
    monkeypatch.setattr(prm.cached, "append", append_)


def _solo(dec, cfg):
    return {i: dec.generate(q, config=cfg)[0] for i, q in enumerate(QUESTIONS) if q != BAD}


@pytest.mark.parametrize("scheduler", ["auto", "lockstep"])
@pytest.mark.parametrize("kind", ["raises", "nan"])
def test_a_reward_failing_for_one_sequence_ends_only_that_sequence(toy, monkeypatch, kind, scheduler):
    cfg = toy.config.model_copy(update={"scheduler": scheduler, "max_new_tokens": 64})
    if kind == "nan":
        dec = RewardGuidedDecoder(toy.draft, toy.target, _NaNFor(toy.reward, BAD), cfg)
        match, error_type = "outside", RewardValueError
    else:
        _unreadable(toy.reward, monkeypatch)
        dec, match, error_type = toy, "cannot be read", Exception
    solo = _solo(dec, cfg)
    seen = _Collect()
    with pytest.raises(error_type, match=match):
        dec.generate(QUESTIONS, config=cfg, callbacks=[seen])
    assert list(seen.errors) == [QUESTIONS.index(BAD)]
    assert sorted(seen.ends) == sorted(solo)
    for i, alone in solo.items():
        got = seen.ends[i]
        assert got.text == alone.text
        assert [s.source for s in got.steps] == [s.source for s in alone.steps]
        # batched and alone differ only by float rounding (a PRM cache left half-written would not)
        assert [s.reward for s in got.steps] == pytest.approx([s.reward for s in alone.steps], rel=1e-3, abs=1e-6)
    assert _idle(dec)  # no model keeps any state
    assert dec.generate(QUESTIONS[0], config=cfg)[0].text == solo[0].text  # the decoder stays usable


def test_a_failure_it_cannot_pin_on_one_sequence_fails_the_batch(toy, monkeypatch):
    """The PRM failing for every sequence of one scoring call alike is the batch's failure: raised, not
    isolated. (``score_batch=3`` puts the three step ends in one call; scored one at a time, as by default,
    each failure is that sequence's own.)"""
    def broken(seq, ids):
        raise ValueError("PRM broken")

    monkeypatch.setattr(toy.reward.cached, "append", broken)
    seen = _Collect()
    with pytest.raises(Exception, match="PRM broken"):
        toy.generate(QUESTIONS[:3], config=RSDConfig(max_new_tokens=32, score_batch=3), callbacks=[seen])
    assert not seen.ends and not seen.errors
    assert not toy.draft.cached.states and not toy.target.cached.states and not toy.reward.cached.states


def test_through_chatrsd_batching_only_the_caller_whose_reward_failed_gets_the_error(toy, monkeypatch):
    _unreadable(toy.reward, monkeypatch)
    llm = ChatRSD(decoder=RewardGuidedDecoder(toy.draft, toy.target, toy.reward, toy.config), max_tokens=64)
    solo = {q: llm.invoke(q).content for q in QUESTIONS if q != BAD}
    outs = llm.batch(QUESTIONS, return_exceptions=True)
    for q, out in zip(QUESTIONS, outs):
        if q == BAD:
            assert isinstance(out, Exception) and "cannot be read" in str(out)
        else:
            assert not isinstance(out, Exception), out
            assert out.content == solo[q]
