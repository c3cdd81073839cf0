"""The native engine's device loop (state on the device, a window of tokens per host check, each token a
graph body) against its host loop: the same tokens, steps, ledgers and counts, whatever the window.

On CPU the bodies run eagerly; on CUDA the same bodies are captured and replayed (benchmarks/gpu.py)."""

from __future__ import annotations

import pytest
import torch

from rsd_core import RewardGuidedDecoder, RSDConfig, SamplingConfig
from rsd_core.backends.hf import HFGenerator
from rsd_core.runtime import native_forward
from rsd_core.runtime.device_loop import DeviceLoop
from rsd_core.runtime.graphs import Graphs

from test_arrivals import _After
from test_decoder import PROMPTS, every_other_step
from test_native_engine import staggered, trace

MORE = PROMPTS + ["Dan has 7 cats and 2 dogs.", "Eve reads 3 books a week."]


def pair(paths, reward=every_other_step, window=8, loop_options=None, **cfg):
    """The same decoder twice: host loop, and device loop with ``window`` tokens per check (and
    ``loop_options``: launches, polling)."""
    config = RSDConfig(max_new_tokens=cfg.pop("max_new_tokens", 40), max_step_tokens=cfg.pop("max_step_tokens", 6),
                       **cfg)
    out = []
    for loop in (False, True):
        d = HFGenerator.from_pretrained(paths["draft"], device_loop=loop)
        t = HFGenerator.from_pretrained(paths["target"], device_loop=loop)
        if loop:
            for g in (d, t):
                g.cached.device_loop = DeviceLoop(g.cached, window=window, **(loop_options or {}))
        out.append(RewardGuidedDecoder(d, t, reward, config))
    return out


def same(a, b):
    for x, y in zip(a, b):
        assert trace(x) == trace(y) and x.text == y.text and x.finish_reason == y.finish_reason
        assert [s.reward for s in x.steps] == [s.reward for s in y.steps]
        assert (x.stats.rewritten_steps, x.stats.speculated_tokens, x.stats.rewrite_forwards) == (
            y.stats.rewritten_steps, y.stats.speculated_tokens, y.stats.rewrite_forwards)
        for m in ("draft", "target"):
            u, v = getattr(x.stats, m), getattr(y.stats, m)
            assert (u.prefill_tokens, u.decode_tokens, u.calls) == (v.prefill_tokens, v.decode_tokens, v.calls), m
            assert u.flops == pytest.approx(v.flops) and u.paper_flops == v.paper_flops


@pytest.mark.parametrize("overlap", [False, True], ids=["", "overlap"])
@pytest.mark.parametrize("window", [1, 3, 8])
def test_device_loop_writes_what_the_host_loop_writes(tiny_paths, window, overlap):
    """With ``overlap``, each look with rows still writing launches once more before the host's work on
    it (the CUDA default; a look that stops every row, as RSD's flush to the target does, undoes it)."""
    host, device = pair(tiny_paths, staggered, window=window, loop_options={"overlap": overlap})
    assert device.draft.cached.device_loop is not None and host.draft.cached.device_loop is None
    same(device.generate(MORE), host.generate(MORE))
    for dec in (host, device):  # every sequence released, every slot free again
        assert dec.draft.cached.states == {} and len(dec.draft.cached.cache._free) == dec.draft.cached.cache.slots


@pytest.mark.parametrize("overlap", [False, True], ids=["", "overlap"])
@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_device_loop_single_model_runs(tiny_paths, threshold, overlap):
    """Draft only and target only: a row writes its steps back to back inside one decode."""
    host, device = pair(tiny_paths, None, threshold=threshold, max_new_tokens=48, loop_options={"overlap": overlap})
    same(device.generate(MORE), host.generate(MORE))
    one_host, one_device = host.generate(MORE[:1]), device.generate(MORE[:1])
    same(one_device, one_host)


def test_device_loop_in_lockstep_rounds_and_with_grouped_scores(tiny_paths):
    for cfg in ({"scheduler": "lockstep"}, {"score_batch": 3, "target_batch": None}):
        host, device = pair(tiny_paths, staggered, **cfg)
        same(device.generate(MORE), host.generate(MORE))


@pytest.mark.parametrize("overlap", [False, True], ids=["", "overlap"])
@pytest.mark.parametrize("rewrite", [False, True])
def test_device_loop_samples_the_same_seeded_text(tiny_paths, rewrite, overlap):
    """Sampling stays inside the body: each row's own random stream, so the seeded text is the host
    loop's, alone or in a batch. (A sampled draft whose rejected steps the target verifies keeps its
    distributions: that draft takes the host loop.)"""
    sampled = SamplingConfig(temperature=0.8, top_p=0.9, top_k=20)
    host, device = pair(tiny_paths, staggered, draft_sampling=sampled, target_sampling=sampled, seed=5,
                        speculative_rewrite=rewrite, loop_options={"overlap": overlap})
    a, b = device.generate(MORE), host.generate(MORE)
    same(a, b)
    assert [r.text for r in device.generate(MORE[2:3])] == [a[2].text]
    assert sum(r.stats.rewritten_steps for r in a) > 0


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["sdpa", "flex"])
def test_compiled_device_loop_writes_what_the_host_loop_writes(tiny_paths, attention):
    """The forward through torch.compile (inductor; on CPU its C++ backend): the same tokens. (FlexAttention
    is compiled into the body on CUDA only: on CPU the body keeps the dense mask.)"""
    host, device = pair(tiny_paths, staggered, window=4)
    for g in (device.draft, device.target):
        g.cached.device_loop = DeviceLoop(g.cached, window=4, compiled=True)
        g.cached.forward.attention = attention
    same(device.generate(MORE), host.generate(MORE))


@pytest.mark.parametrize("overlap", [False, True], ids=["", "overlap"])
def test_device_loop_crosses_cache_growth_and_budgets(tiny_paths, overlap):
    """A prompt past the first 256 cache columns (the slots grow mid-run), tight budgets, max_new_tokens
    hit inside a window."""
    long_prompt = "Ann has 12 apples. " * 40
    host, device = pair(tiny_paths, staggered, window=5, max_new_tokens=23, max_step_tokens=4,
                        loop_options={"overlap": overlap})
    same(device.generate([long_prompt, *MORE]), host.generate([long_prompt, *MORE]))
    assert device.draft.cached.cache.generation > 1


@pytest.mark.parametrize("overlap", [False, True], ids=["", "overlap"])
@pytest.mark.parametrize("threshold", [0.7, 1.0])
def test_device_loop_takes_in_prompts_that_arrive(tiny_paths, threshold, overlap):
    """Prompts that arrive mid-run stop every row where it is (partial steps come back and are written
    on after the newcomers join): the texts are those of the host loop, and each as alone."""
    host, device = pair(tiny_paths, staggered, window=4, max_new_tokens=30, threshold=threshold,
                        loop_options={"overlap": overlap})
    outs = []
    for dec in (host, device):
        arrivals = _After(MORE[3:], k=3)
        outs.append(dec.generate(MORE[:3], callbacks=[arrivals], arrivals=arrivals))
        assert arrivals.joined_at is not None
    same(outs[1], outs[0])
    assert [r.text for r in outs[1]] == [device.generate(p)[0].text for p in MORE]


def same_writing(a, b):
    """The same steps, texts and rewards, and as many tokens decoded (how steps that end together are
    grouped into the step hook's calls, and so the count of calls, may differ)."""
    for x, y in zip(a, b):
        assert trace(x) == trace(y) and x.text == y.text and x.finish_reason == y.finish_reason
        assert [s.reward for s in x.steps] == [s.reward for s in y.steps]
        assert (x.stats.draft.decode_tokens, x.stats.target.decode_tokens) == (
            y.stats.draft.decode_tokens, y.stats.target.decode_tokens)


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "seeded"])
def test_overlapped_looks_with_steps_of_uneven_length(tiny_paths, sampled, monkeypatch):
    """Steps end at a delimiter, each row at its own time, so looks find other rows still writing and
    launch once more before the host's work; RSD's flushes to the target then stop every row with that
    launch's tokens unread, which are undone (with the draws they used: the seeded text is the same)."""
    cfg = {"step_delimiters": ["s"], "max_step_tokens": 12}
    if sampled:
        sampling = SamplingConfig(temperature=0.8, top_p=0.9, top_k=20)
        cfg.update(draft_sampling=sampling, target_sampling=sampling, seed=5, speculative_rewrite=False)
    host, device = pair(tiny_paths, staggered, loop_options={"overlap": True}, **cfg)
    undone = []
    real = DeviceLoop._check

    def check(self, *args, **kw):
        stop = real(self, *args, **kw)
        undone.append(stop and self._extra)
        return stop

    monkeypatch.setattr(DeviceLoop, "_check", check)
    same_writing(device.generate(MORE), host.generate(MORE))
    assert sum(undone) >= 3


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("attention", ["grouped", "flex"])
def test_device_loop_with_other_attentions(tiny_paths, attention, monkeypatch):
    """The attention CUDA takes for masked grouped-query heads, and FlexAttention reading each row's slot
    up to its own length (on CPU its reference version), in the device loop: the same tokens."""
    host, device = pair(tiny_paths, staggered)
    for g in (device.draft, device.target):
        fwd = g.cached.forward
        assert fwd.heads != fwd.kv_heads
        fwd.attention = attention
    masks = []
    real = native_forward.length_block_mask
    monkeypatch.setattr(native_forward, "length_block_mask", lambda pos, L: masks.append(L) or real(pos, L))
    same(device.generate(MORE), host.generate(MORE))
    assert bool(masks) == (attention == "flex")


def test_device_loop_reads_only_the_calls_slots(tiny_paths, monkeypatch):
    """A decode's rows are its own sequences (padded to a power of two), each reading its slot by index:
    the target rewriting a few rejected steps reads those slots, not every slot in flight."""
    host, device = pair(tiny_paths, staggered)
    seen = []
    real = type(device.target.cached.forward).decode_slots

    def spy(fwd, tok, pos, cols, L, cache, slots=None):
        seen.append((fwd is device.target.cached.forward, tok.shape[0], cache.slots, slots is not None))
        return real(fwd, tok, pos, cols, L, cache, slots)

    monkeypatch.setattr(type(device.target.cached.forward), "decode_slots", spy)
    same(device.generate(MORE), host.generate(MORE))
    target = [(rows, slots, gathered) for is_target, rows, slots, gathered in seen if is_target]
    assert any(gathered and rows < slots for rows, slots, gathered in target)
    assert all(rows & (rows - 1) == 0 for _, rows, _, _ in seen)  # powers of two
    eng = device.target.cached
    assert eng.forward_rows <= eng.rows_computed < eng.forwards * eng.cache.slots


@pytest.mark.parametrize("options", [{"per_launch": 3}, {"early": 1.0}, {"early": 0.5, "per_launch": 2}])
def test_device_loop_launches_several_tokens_and_looks_early(tiny_paths, options):
    """Several tokens per launch (the window rounds up to whole launches), and looks as soon as the
    device flags them: the same tokens, steps and ledgers."""
    host, device = pair(tiny_paths, staggered, window=7, loop_options=options)
    assert device.target.cached.device_loop.window % device.target.cached.device_loop.per_launch == 0
    same(device.generate(MORE), host.generate(MORE))


class _Event:
    """A CUDA event as the polling loop sees it, for CPU tensors (done at once or after a few queries)."""

    def __init__(self, log, slow):
        self.log, self.slow, self.left = log, slow, 0

    def record(self):
        self.left = 2 if self.slow else 0

    def query(self):
        self.left -= 1
        return self.left < 0

    def synchronize(self):
        if self.left >= 0:  # not done yet: the host blocks
            self.log.append("wait")
        self.left = -1


@pytest.mark.parametrize("ahead,slow", [(1, False), (2, True), (3, False)])
def test_device_loop_polls_flags_behind_queued_launches(tiny_paths, ahead, slow):
    """The CUDA path: each launch's flag is copied out behind it and polled while ``ahead`` launches stay
    queued (here with stand-in events over CPU tensors): a look noticed late runs idle rows, not other
    tokens."""
    host, device = pair(tiny_paths, staggered, loop_options={"ahead": ahead})
    waits: list[str] = []
    for g in (device.draft, device.target):
        loop = g.cached.device_loop
        loop._events = [_Event(waits, slow) for _ in range(len(loop._flags))]
    same(device.generate(MORE), host.generate(MORE))
    assert ("wait" in waits) == (slow or ahead == 1)


def test_device_loop_stops_at_a_steps_end_at_batch_1(tiny_paths):
    """Alone, a row's step end is looked at the token it happens: no forward runs past it, so the
    forwards are the host loop's (which stops at once), and one look per step or window."""
    host, device = pair(tiny_paths, None, threshold=0.0, max_new_tokens=48)
    a, b = device.generate(MORE[:1]), host.generate(MORE[:1])
    same(a, b)
    assert device.draft.cached.forwards == host.draft.cached.forwards
    loop = device.draft.cached.device_loop
    assert loop.looks == len(a[0].steps)  # steps of 6 tokens, windows of 8
    with pytest.raises(ValueError, match="per_launch"):
        DeviceLoop(device.draft.cached, per_launch=0)


def test_graphs_run_their_body_eagerly_when_off():
    x = torch.zeros(3)
    g = Graphs(enabled=False)
    for _ in range(2):
        g.run(("k",), lambda: x.add_(1), state=[x])
    assert x.tolist() == [2.0, 2.0, 2.0] and len(g) == 0
