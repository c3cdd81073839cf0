"""Reliability and safety (issue 9): fuzzed input, concurrency, cancellation, soak, faults, safety.

Sizes: ``RSD_FUZZ_EXAMPLES`` (default 150 per fuzzed surface) and ``RSD_SOAK_CALLS`` (default 1000)
make the runs larger, e.g. ``RSD_FUZZ_EXAMPLES=2000 RSD_SOAK_CALLS=10000 pytest tests/test_reliability.py``.
Figures the slow tests measure are printed (``-s``) and written to ``$RSD_RELIABILITY_JSON`` if set.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from rsd_core import RewardGuidedDecoder, RSDConfig
from rsd_core.errors import (
    InvalidPromptError,
    ModelLoadError,
    ModelRunError,
    PromptTooLongError,
    UnknownRewardModelError,
)
from rsd_core.eval.datasets import toy_examples
from rsd_core.messages import validate_messages
from rsd_core.options import ModelSpec
from rsd_core.rewards import arithmetic_reward
from rsd_core.tool_format import HERMES
from rsd_integrations._shared import get_decoder
from rsd_integrations.langchain import ChatRSD

FUZZ = int(os.environ.get("RSD_FUZZ_EXAMPLES", "150"))
SOAK = int(os.environ.get("RSD_SOAK_CALLS", "1000"))
FIGURES: dict = {}
fuzz = settings(max_examples=FUZZ, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def _record(key, value):
    FIGURES[key] = value
    out = os.environ.get("RSD_RELIABILITY_JSON")
    if out:
        Path(out).write_text(json.dumps(FIGURES, indent=2) + "\n")
    print(f"\n{key}: {value}")


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _idle(dec) -> bool:
    """No sequence state left in any of the decoder's models."""
    models = [dec.draft.cached, dec.target.cached] + ([dec.reward.cached] if hasattr(dec.reward, "cached") else [])
    return all(not m.states for m in models)


def _wait_idle(dec, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _idle(dec):
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def shared():
    """The decoder every default ChatRSD shares (the toy trio)."""
    return get_decoder(ModelSpec())


QUESTIONS = [e.question for e in toy_examples(16, seed=4040)]

# ============================================================================ bad input, fuzzed

FIELDS = ["threshold", "weighting", "constant_p", "alpha", "max_new_tokens", "max_steps", "max_step_tokens",
          "step_delimiters", "seed", "draft_sampling", "target_sampling"]
ANY = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                st.text(max_size=8), st.lists(st.text(max_size=4), max_size=3),
                st.dictionaries(st.sampled_from(["temperature", "top_p", "top_k", "x"]),
                                st.one_of(st.floats(-2, 12), st.integers(-3, 5)), max_size=3))


@fuzz
@given(st.dictionaries(st.sampled_from(FIELDS + ["bogus"]), ANY, max_size=5))
def test_config_values_fuzzed(values):
    try:
        cfg = RSDConfig(**values)
    except ValidationError as e:
        assert any(loc in str(e) for loc in values), str(e)  # the message names the field
        return
    assert 0.0 <= cfg.threshold <= 1.0 and cfg.max_new_tokens >= 1 and cfg.step_delimiters


ROLE = st.one_of(st.sampled_from(["system", "user", "assistant", "tool", "bot", "", "USER"]), st.none(), st.integers())
TEXT = st.one_of(st.text(max_size=40), st.text(alphabet=st.characters(codec="utf-8"), max_size=20),
                 st.sampled_from(["", " ", "\x00", "\u202e\u200b", "🧮" * 5, "<|im_end|>", "<tool_call>{", "\n\n"]))
CONTENT = st.one_of(TEXT, st.none(), st.integers(), st.lists(st.text(max_size=3), max_size=2),
                    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2))
CALL = st.one_of(st.fixed_dictionaries({"id": st.sampled_from(["a", "b", ""]),
                                        "function": st.fixed_dictionaries({"name": st.text(max_size=5),
                                                                           "arguments": st.one_of(st.text(max_size=5),
                                                                                                  st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))})}),
                 st.integers(), st.text(max_size=3), st.none())
MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": ROLE, "content": CONTENT},
                          optional={"tool_calls": st.one_of(st.lists(CALL, max_size=2), st.integers(), st.text(max_size=2)),
                                    "tool_call_id": st.one_of(st.sampled_from(["a", "b", "zz"]), st.none(), st.integers())}),
    st.text(max_size=5), st.integers(), st.none())


@fuzz
@given(st.one_of(st.lists(MESSAGE, max_size=5), st.none(), st.text(max_size=5), st.integers()))
def test_message_lists_fuzzed_through_the_decoder(shared, messages):
    """Every message list gives either a result or an InvalidPromptError / PromptTooLongError, never a crash."""
    try:
        ok = messages if isinstance(messages, str) and messages else validate_messages(messages)  # text: a raw prompt
    except InvalidPromptError as e:
        assert str(e)
        ok = None
    cfg = shared.config.model_copy(update={"max_new_tokens": 4, "max_steps": 2})
    try:
        res = shared.generate([messages], config=cfg)
    except (InvalidPromptError, PromptTooLongError) as e:
        assert str(e)
    else:
        assert ok is not None and isinstance(res[0].text, str)
    assert _idle(shared)


SCHEMA = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["function", "tool", "x"]),
                           "function": st.fixed_dictionaries({"name": st.text(max_size=6)},
                                                             optional={"description": st.text(max_size=6),
                                                                       "parameters": st.one_of(st.none(), st.integers(),
                                                                                               st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2))})}),
    st.dictionaries(st.text(max_size=5), st.one_of(st.text(max_size=5), st.integers()), max_size=3),
    st.integers(), st.text(max_size=5), st.none())


@fuzz
@given(st.lists(SCHEMA, min_size=1, max_size=3))
def test_tool_schemas_fuzzed(tools):
    llm = ChatRSD(max_tokens=4, max_steps=1)
    try:
        bound = llm.bind_tools(tools)
    except (ValueError, TypeError) as e:
        assert str(e)
        return
    msg = bound.invoke("What is 2 + 3?")
    assert isinstance(msg.content, str) and isinstance(msg.tool_calls, list)


CALL_TEXT = st.lists(st.one_of(
    st.text(max_size=20),
    st.builds(lambda b: f"<tool_call>{b}</tool_call>", st.one_of(
        st.text(max_size=20),
        st.builds(json.dumps, st.dictionaries(st.sampled_from(["name", "arguments", "parameters", "x"]),
                                              st.one_of(st.text(max_size=5), st.integers(), st.none(),
                                                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)),
                                              max_size=3)))),
    st.builds(lambda b: f"<tool_call>{b}", st.text(max_size=20)),  # truncated
), max_size=5).map("".join)


@fuzz
@given(CALL_TEXT, st.lists(st.integers(1, 7), min_size=1, max_size=20))
def test_tool_call_outputs_fuzzed(text, cuts):
    content, calls, bad = HERMES.parse(text)
    assert isinstance(content, str)
    for c in calls:
        assert isinstance(c.name, str) and isinstance(c.arguments, dict)
    for b in bad:
        assert b.error
    if calls or bad:
        assert HERMES.open not in content
    f, out, i = HERMES.stream_filter(), [], 0
    for n in cuts * (len(text) // max(1, sum(cuts)) + 1):
        if i >= len(text):
            break
        out.append(f.feed(text[i:i + n]))
        i += n
    out.append(f.feed(text[i:]))
    out.append(f.finish())
    streamed = "".join(out)
    assert HERMES.open not in streamed
    if HERMES.open not in text:
        assert streamed == text


@fuzz
@given(st.one_of(st.lists(st.one_of(st.text(max_size=4), st.integers(), st.none()), max_size=3), st.text(max_size=3),
                 st.none(), st.integers()))
def test_stop_sequences_fuzzed(shared, stop):
    cfg = shared.config.model_copy(update={"max_new_tokens": 24})
    try:
        (res,) = shared.generate([QUESTIONS[0]], config=cfg, stop=stop)
    except ValueError as e:
        assert "stop" in str(e)
        return
    for s in stop or []:
        assert s not in res.text


def _empty_dir(d):
    (d / "empty").mkdir()
    return d / "empty"


def _bad_config(d):
    (d / "bad").mkdir()
    (d / "bad" / "config.json").write_text("{not json")
    return d / "bad"


def _a_file(d):
    (d / "weights.bin").write_bytes(b"\0" * 16)
    return d / "weights.bin"


def _not_gguf(d):
    (d / "model.gguf").write_bytes(b"\0" * 64)
    return d / "model.gguf"


@pytest.mark.parametrize("make, match", [
    (lambda d: d / "missing", "missing"),
    (_empty_dir, "no config.json"),
    (_bad_config, "not valid JSON"),
    (_a_file, "is a file"),
    (_not_gguf, r"model\.gguf.*not a GGUF file"),
])
def test_model_paths_that_do_not_hold_a_model(tmp_path, make, match, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a missing local path is tried as a hub id: fail fast here
    path = str(make(tmp_path))
    with pytest.raises(ModelLoadError, match=match):
        RewardGuidedDecoder.from_pretrained(draft=path, target=path)


def test_a_gguf_file_without_the_gguf_package_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ModelLoadError, match=r"model\.gguf.*pip install gguf"):
        RewardGuidedDecoder.from_pretrained(draft=str(_not_gguf(tmp_path)), target=str(_not_gguf(tmp_path)))


def test_wrong_kind_of_checkpoint_for_a_reward_model(tmp_path):
    from rsd_core.toy import toy_model_paths

    bare = tmp_path / "lm"
    bare.mkdir()
    cfg = json.loads((Path(toy_model_paths()["target"]) / "config.json").read_text())
    cfg["architectures"] = ["Qwen2Model"]  # no head: no reward family fits
    (bare / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnknownRewardModelError, match="reward_type"):
        RewardGuidedDecoder.from_pretrained(toy_model_paths()["draft"], toy_model_paths()["target"], str(bare))


def test_prompt_longer_than_the_context_fails_before_any_model_work(shared):
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *a: calls.append(1)) for m in
             (shared.draft.model, shared.target.model)]
    try:
        huge = "7 + 8 = 15. " * 5000
        with pytest.raises(PromptTooLongError, match="reads at most"):
            shared.generate([QUESTIONS[0], huge])  # one bad prompt: nothing runs, for either
    finally:
        for h in hooks:
            h.remove()
    assert calls == [] and _idle(shared)


# ============================================================================ concurrency


@pytest.mark.slow
def test_sixteen_concurrent_ainvoke_and_astream_match_solo_outputs(shared):
    llm = ChatRSD(max_tokens=96)
    solo = [llm.invoke(q).content for q in QUESTIONS]

    async def run():
        async def streamed(q):
            return "".join([c.content async for c in llm.astream(q)])
        inv = asyncio.gather(*(llm.ainvoke(q) for q in QUESTIONS))
        stm = asyncio.gather(*(streamed(q) for q in QUESTIONS))
        return await inv, await stm

    inv, stm = asyncio.run(run())
    assert [m.content for m in inv] == solo
    assert stm == solo
    threaded = llm.batch(QUESTIONS, config={"max_concurrency": 16})
    assert [m.content for m in threaded] == solo
    assert _wait_idle(shared)


def test_llama_index_concurrent_calls_match_solo_outputs(shared):
    from llama_index.core.llms import ChatMessage

    from rsd_integrations.llama_index import RSDLLM

    llm = RSDLLM(max_tokens=96)
    solo = [llm.complete(q).text for q in QUESTIONS]

    async def run():
        async def streamed(q):
            last = None
            async for r in await llm.astream_chat([ChatMessage(role="user", content=q)]):
                last = r
            return last.message.content

        inv = asyncio.gather(*(llm.acomplete(q) for q in QUESTIONS))
        stm = asyncio.gather(*(streamed(q) for q in QUESTIONS))
        return await inv, await stm

    inv, stm = asyncio.run(run())
    assert [r.text for r in inv] == solo and stm == solo
    assert _wait_idle(shared)


@fuzz
@given(st.lists(st.tuples(st.sampled_from(["user", "assistant", "system", "tool"]), TEXT), max_size=4))
def test_llama_index_messages_fuzzed(shared, turns):
    from llama_index.core.llms import ChatMessage

    from rsd_integrations.llama_index import RSDLLM

    llm = RSDLLM(max_tokens=4, max_steps=1)
    msgs = [ChatMessage(role=r, content=c) for r, c in turns]
    try:
        out = llm.chat(msgs)
    except (InvalidPromptError, PromptTooLongError, ValueError) as e:
        assert str(e)
    else:
        assert isinstance(out.message.content, str)
    assert _wait_idle(shared)


def test_decoder_state_is_not_shared_across_requests(shared):
    """Two different settings at once: each answer is what its own settings give alone."""
    a, b = ChatRSD(max_tokens=96, threshold=0.0), ChatRSD(max_tokens=96, threshold=1.0)
    want = (a.invoke(QUESTIONS[1]).content, b.invoke(QUESTIONS[1]).content)

    async def both():
        return await asyncio.gather(a.ainvoke(QUESTIONS[1]), b.ainvoke(QUESTIONS[1]))

    got = asyncio.run(both())
    assert (got[0].content, got[1].content) == want


# ============================================================================ cancellation


@pytest.mark.slow
def test_abandoned_streams_and_cancelled_tasks_free_their_state(shared):
    llm = ChatRSD(max_tokens=400)
    llm.invoke(QUESTIONS[0])
    gc.collect()
    threads0, rss0 = threading.active_count(), _rss_mb()
    for i in range(20):
        stream = llm.stream(QUESTIONS[i % 16])
        next(stream)
        next(stream)
        stream.close()  # the consumer walks away
        assert _wait_idle(shared, 10), "an abandoned stream kept its sequence"

    async def cancel_some():
        for i in range(20):
            task = asyncio.create_task(llm.ainvoke(QUESTIONS[i % 16]))
            await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(cancel_some())
    assert _wait_idle(shared, 10), "a cancelled task kept its sequence"
    assert llm.invoke(QUESTIONS[2]).content  # the next call works
    gc.collect()
    grew = _rss_mb() - rss0
    _record("cancellation", {"abandoned_streams": 20, "cancelled_tasks": 20, "rss_growth_mb": round(grew, 1),
                             "threads_before": threads0, "threads_after": threading.active_count()})
    assert threading.active_count() <= threads0 + 1
    assert grew < 64


# ============================================================================ soak


@pytest.mark.slow
def test_soak_sequential_calls_hold_memory_threads_and_files(shared):
    llm = ChatRSD(max_tokens=16)  # short calls: the soak is about what each call leaves behind
    for q in QUESTIONS[:8]:
        llm.invoke(q)  # warm-up: caches, allocator pools
    gc.collect()
    rss0, threads0, fds0 = _rss_mb(), threading.active_count(), _fds()
    t0 = time.perf_counter()
    samples = []
    for i in range(SOAK):
        assert llm.invoke(QUESTIONS[i % 16]).content
        if (i + 1) % max(1, SOAK // 10) == 0:
            samples.append(round(_rss_mb() - rss0, 1))
    gc.collect()
    rss1, threads1, fds1 = _rss_mb(), threading.active_count(), _fds()
    _record("soak", {"calls": SOAK, "seconds": round(time.perf_counter() - t0, 1), "rss_start_mb": round(rss0, 1),
                     "rss_end_mb": round(rss1, 1), "rss_growth_mb": round(rss1 - rss0, 1),
                     "rss_growth_samples_mb": samples, "threads": [threads0, threads1], "open_files": [fds0, fds1]})
    assert rss1 - rss0 < 50, f"resident memory grew {rss1 - rss0:.1f} MB over {SOAK} calls"
    assert threads1 <= threads0 and fds1 <= fds0
    assert _idle(shared)


# ============================================================================ faults


class _FailOn:
    """Makes a model raise on its k-th forward from now: a forward hook on a transformers model, or, for a
    generator on the native engine (which runs the weights without the module), its forward function."""

    def __init__(self, model, k, error):
        self.n, self.k, self.error = 0, k, error
        engine = getattr(getattr(model, "cached", None), "forward", None)
        if engine is not None and not isinstance(model, torch.nn.Module):
            self.owner, self.real = model.cached, engine
            real = engine

            def failing(*a, **kw):
                self(*a)
                return real(*a, **kw)

            model.cached.forward = failing
            self.handle = None
        else:
            model = getattr(model, "model", model)
            self.handle = model.register_forward_pre_hook(self)

    def __call__(self, *a):
        self.n += 1
        if self.n == self.k:
            raise self.error

    def remove(self):
        if self.handle is not None:
            self.handle.remove()
        else:
            self.owner.forward = self.real  # back to the engine's own


@pytest.mark.parametrize("role, error, oom", [
    ("draft", RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED"), False),
    ("target", torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    ("reward", RuntimeError("device-side assert triggered"), False),
])
def test_a_model_failing_mid_step_fails_the_call_cleanly(toy, role, error, oom):
    model = {"draft": toy.draft, "target": toy.target, "reward": toy.reward}[role]
    cfg = toy.config.model_copy(update={"threshold": 0.9999})  # every role runs
    fail = _FailOn(model, 3, error)
    try:
        with pytest.raises(ModelRunError, match=f"the {role} model") as info:
            toy.generate(QUESTIONS[:4], config=cfg)
    finally:
        fail.remove()
    assert info.value.out_of_memory is oom and info.value.__cause__ is error
    assert _idle(toy)  # every sequence of the failed batch was released
    assert [r.text for r in toy.generate(QUESTIONS[:2], config=cfg)]  # the instance stays usable


def test_a_failure_inside_a_batch_reaches_every_caller_and_the_model_lives_on(shared):
    llm = ChatRSD(max_tokens=64)
    want = llm.invoke(QUESTIONS[3]).content
    fail = _FailOn(shared.target, 2, RuntimeError("boom"))
    try:
        outs = llm.batch(QUESTIONS[:6], return_exceptions=True)
    finally:
        fail.remove()
    # Sequences that finished before the failure have their answers (results go out as each ends);
    # every other caller gets the error, and none a half-written text.
    failed = [o for o in outs if isinstance(o, Exception)]
    assert failed and all(isinstance(o, ModelRunError) and "boom" in str(o) for o in failed)
    assert _wait_idle(shared) and llm.invoke(QUESTIONS[3]).content == want
    for q, o in zip(QUESTIONS[:6], outs):
        if not isinstance(o, Exception):
            assert o.content == llm.invoke(q).content


@pytest.mark.slow
def test_eval_killed_mid_run_resumes_with_nothing_lost_or_repeated(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rsd_core.cli", "eval", "--dataset", "toy", "--n", "48", "--methods",
           "target,rsd", "--batch-size", "4", "--out", str(out), "--no-progress"]
    records = out / "records.jsonl"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not records.exists() or len(records.read_text().splitlines()) < 30):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(records.read_text().splitlines()) - 1
    assert 0 < done_before < 96, "the kill should land mid-run"
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    rows = [json.loads(x) for x in records.read_text().splitlines()[1:]]
    keys = [(r["method"], r["id"]) for r in rows]
    assert len(keys) == len(set(keys)) == 96
    fresh = subprocess.run(cmd[:-3] + ["--out", str(tmp_path / "fresh"), "--no-progress"], capture_output=True,
                           text=True, timeout=300)
    assert fresh.returncode == 0
    a = json.loads((out / "summary.json").read_text())["methods"]
    b = json.loads((tmp_path / "fresh" / "summary.json").read_text())["methods"]
    strip = lambda ms: [{k: v for k, v in m.items() if not k.startswith("wall")} for m in ms]  # noqa: E731
    assert strip(a) == strip(b)
    _record("eval_resume", {"killed_after_records": done_before, "records_after_resume": len(rows)})


# ============================================================================ safety


def test_remote_code_is_never_trusted_unless_asked(monkeypatch):
    import rsd_core.backends.hf as hf

    seen = []
    real = hf.load_pretrained

    def spy(auto_cls, name, **kw):
        seen.append(kw.get("trust_remote_code"))
        return real(auto_cls, name, **kw)

    monkeypatch.setattr(hf, "load_pretrained", spy)
    import rsd_core.rewards.likelihood as lk

    monkeypatch.setattr(lk, "load_pretrained", spy)
    RewardGuidedDecoder.from_pretrained()
    assert seen and all(v is False for v in seen)
    assert ChatRSD().trust_remote_code is False and ModelSpec().trust_remote_code is False
    from rsd_core.cli import build_parser

    assert build_parser().parse_args(["generate", "x"]).trust_remote_code is False


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('RSD_PWNED', '/tmp/rsd-pwned')}",))


def test_pickle_checkpoints_never_run_code(tmp_path, monkeypatch):
    from rsd_core.toy import toy_model_paths

    marker = tmp_path / "pwned"
    monkeypatch.setenv("RSD_PWNED", str(marker))
    ckpt = tmp_path / "evil"
    ckpt.mkdir()
    src = Path(toy_model_paths()["draft"])
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (ckpt / f).write_bytes((src / f).read_bytes())
    with open(ckpt / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"model.embed_tokens.weight": _Payload()}, fh)
    with pytest.raises(ModelLoadError, match="could not load"):
        RewardGuidedDecoder.from_pretrained(draft=str(ckpt), target=str(ckpt))
    assert not marker.exists(), "loading a pickle checkpoint ran code"


@pytest.mark.parametrize("step", [
    "9 ** 9 ** 9 ** 9 = 1", "2 ** 99999999 = 3", "(" * 5000 + "1" + ")" * 5000 + " = 1",
    "1" * 100000 + " + 1 = 2", "__import__('os').system('true') = 0", "10 ** -99999 = 0",
])
def test_arithmetic_reward_declines_hostile_steps_instead_of_evaluating_them(step):
    assert arithmetic_reward("", [], step) == 0.5  # the neutral "cannot check" reward, nothing evaluated
    assert arithmetic_reward("", [], step, neutral=0.25) == 0.25


def _with_config(tiny_paths, tmp_path, **changes):
    import shutil

    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_paths["draft"], dst)
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(cfg | changes))
    return dst


@pytest.mark.parametrize("changes, match", [({"num_hidden_layers": 10**7}, "num_hidden_layers=10000000"),
                                            ({"hidden_size": 10**9}, "hidden_size=1000000000"),
                                            ({"vocab_size": -5}, "vocab_size=-5"),
                                            ({"num_hidden_layers": 1000, "hidden_size": 60000,
                                              "intermediate_size": 1000000}, "parameters")])
def test_a_config_with_sizes_no_model_has_fails_fast(tiny_paths, tmp_path, changes, match):
    path = _with_config(tiny_paths, tmp_path, **changes)
    with pytest.raises(ModelLoadError, match=match):
        RewardGuidedDecoder.from_pretrained(draft=str(path), target=str(path))


def test_a_tokenizer_that_cannot_write_text_is_refused(tiny_paths, tmp_path):
    import shutil

    from tokenizers import Tokenizer, models

    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_paths["draft"], dst)
    (dst / "tokenizer.json").unlink()
    tiny = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 2, "c": 3}, unk_token="<unk>"))
    tiny.save(str(tmp_path / "elsewhere.json"))
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg | {"tokenizer_file": str(tmp_path / "elsewhere.json")}))
    with pytest.raises(ModelLoadError, match="tokenizer cannot"):
        RewardGuidedDecoder.from_pretrained(draft=str(dst), target=str(dst))


@pytest.mark.parametrize("template, match", [
    pytest.param("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
                 "did not finish", marks=pytest.mark.slow),
    ("{{ 'x' * 1000000000 }}", "GiB|characters"),
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recursed"),
])
@pytest.mark.slow
def test_a_chat_template_that_hangs_or_explodes_is_refused_at_load(tiny_paths, tmp_path, template, match):
    import shutil

    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_paths["draft"], dst)
    for f in dst.glob("chat_template.jinja"):
        f.unlink()
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg | {"chat_template": template}))
    with pytest.raises(ModelLoadError, match=rf"{dst.name}.*chat template.*({match})"):
        RewardGuidedDecoder.from_pretrained(draft=str(dst), target=str(dst))


def test_a_template_that_raises_its_own_error_still_loads():
    from rsd_core.runtime.templates import check_chat_template

    check_chat_template("x", "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}")
