"""The fast path (static slots, shared write column, rollback by mask) gives the plain path's tokens.

On CPU it runs eagerly; the CUDA graph around the same step is exercised by benchmarks/gpu.py.
"""

from __future__ import annotations

import pytest

from rsd_core import RewardGuidedDecoder, RSDConfig
from rsd_core.backends.fast import FastCachedModel
from rsd_core.backends.hf import HFGenerator

from test_decoder import PROMPTS, every_other_step


def decoders(paths, max_len):
    cfg = RSDConfig(max_new_tokens=48, max_step_tokens=10)
    plain = RewardGuidedDecoder(HFGenerator.from_pretrained(paths["draft"]),
                                HFGenerator.from_pretrained(paths["target"]), every_other_step, cfg)
    fast = RewardGuidedDecoder(HFGenerator.from_pretrained(paths["draft"], fast=True, max_len=max_len),
                               HFGenerator.from_pretrained(paths["target"], fast=True, max_len=max_len),
                               every_other_step, cfg)
    return plain, fast


@pytest.mark.parametrize("max_len, bucket", [(512, 256), (96, 16)])  # the second compacts and crosses buckets
def test_fast_path_matches_plain_path(tiny_paths, monkeypatch, max_len, bucket):
    monkeypatch.setattr(FastCachedModel, "BUCKET", bucket)
    plain, fast = decoders(tiny_paths, max_len)
    assert isinstance(fast.draft.cached, FastCachedModel)
    for batch in (PROMPTS, *[[p] for p in PROMPTS]):
        a, b = plain.generate(batch), fast.generate(batch)
        for x, y in zip(a, b):
            assert [(s.source, s.accepted, s.token_ids) for s in x.steps] == \
                   [(s.source, s.accepted, s.token_ids) for s in y.steps]
            assert x.stats.draft.prefill_tokens == y.stats.draft.prefill_tokens
            assert x.stats.target.flops == y.stats.target.flops
    # every slot was given back, and rolled-back columns are masked out
    assert fast.draft.cached.states == {} and not fast.draft.cached.valid.any()


def test_fast_cache_too_small_is_a_clear_error(tiny_paths):
    gen = HFGenerator.from_pretrained(tiny_paths["draft"], fast=True, max_len=16)
    gen.start(0, list(range(1, 30)))
    with pytest.raises(RuntimeError, match="max_len"):
        gen.generate_step([0], [4])
