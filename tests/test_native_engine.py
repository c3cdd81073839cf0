"""The native engine (Llama-family forward over KV slots) against transformers' own forward, and the
target's speculated rewrite of a rejected step against writing it from scratch."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from rsd_core import RewardGuidedDecoder, RSDConfig, SamplingConfig
from rsd_core.backends.hf import HFGenerator
from rsd_core.backends.speculation import verify
from rsd_core.runtime.native_engine import NativeCachedModel
from rsd_core.runtime.native_forward import NativeForward, native_unsupported

from test_decoder import PROMPTS, every_other_step

COMMON = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64, "rope_theta": 500000.0}
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "llama-tied-llama3-rope": (LlamaConfig, LlamaForCausalLM, {"tie_word_embeddings": True, "rope_scaling": LLAMA3_ROPE}),
    "llama-biases": (LlamaConfig, LlamaForCausalLM, {"attention_bias": True, "mlp_bias": True}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),  # q/k/v biases
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 32}),  # q/k norms, head_dim != hidden / heads
}


def tiny(family: str, seed: int = 0):
    cfg_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**COMMON, **extra)).eval()
    with torch.no_grad():  # random biases start at zero: give them values so a dropped bias would show
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("grouped", [False, True], ids=["sdpa", "grouped"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_native_logits_match_transformers(family, grouped):
    """Both attentions (SDPA, and the grouped one CUDA takes for masked grouped-query heads)."""
    model = tiny(family)
    ids = torch.randint(0, 300, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits  # [3, 24, V], each row its own sequence
    fwd = NativeForward(model, max_len=64, attention="grouped" if grouped else None)
    assert fwd.attention == ("grouped" if grouped else "sdpa")
    cache = fwd.new_cache(4)
    # Row 0 in slot 3, row 1 in slot 0, row 2 in slot 1: non-consecutive slots, uneven prefixes, then a
    # right-padded batched chunk, then one decode token each.
    fwd(ids[0:1, :10], [3], [0], cache)
    fwd(ids[1:2, :4], [0], [0], cache)
    fwd(ids[2:3, :17], [1], [0], cache)
    chunk = torch.stack([ids[0, 10:20], torch.cat([ids[1, 4:9], ids.new_zeros(5)]), torch.cat([ids[2, 17:24], ids.new_zeros(3)])])
    out = fwd(chunk, [3, 0, 1], [10, 4, 17], cache)
    assert torch.allclose(out[0], ref[0, 10:20], atol=1e-4)
    assert torch.allclose(out[1, :5], ref[1, 4:9], atol=1e-4)
    assert torch.allclose(out[2, :7], ref[2, 17:24], atol=1e-4)
    # The padded columns of row 1 were written past its length and must not be read: decode at 9.
    step = fwd(torch.stack([ids[0, 20:21], ids[1, 9:10]]), [3, 0], [20, 9], cache, last=[0, 0])
    assert torch.allclose(step[0], ref[0, 20], atol=1e-4) and torch.allclose(step[1], ref[1, 9], atol=1e-4)
    # transformers' own modules still give the same logits: they read views of the fused weights
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, ref, atol=1e-5)


def test_grouped_attention_in_bf16_matches_sdpa():
    """In bf16, as on a GPU: the grouped attention's logits are SDPA's within bf16 rounding."""
    model = tiny("qwen2").to(torch.bfloat16)
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(2))
    outs = []
    for grouped in (False, True):
        fwd = NativeForward(model, max_len=64, attention="grouped" if grouped else "sdpa")
        cache = fwd.new_cache(2)
        outs.append(fwd(ids, [0, 1], [0, 0], cache).float())
    assert (outs[0] - outs[1]).abs().max() < 0.05 * outs[0].abs().max()
    assert (outs[0].argmax(-1) == outs[1].argmax(-1)).float().mean() > 0.9


def test_weights_are_held_once():
    model = tiny("qwen2")
    fwd = NativeForward(model, max_len=64)
    layer, attn = fwd.layers[0], model.model.layers[0].self_attn
    assert attn.q_proj.weight.untyped_storage().data_ptr() == layer.qkv.w.untyped_storage().data_ptr()
    assert model.model.layers[0].mlp.up_proj.weight.untyped_storage().data_ptr() == \
        layer.gate_up.w.untyped_storage().data_ptr()


def test_other_architectures_keep_the_transformers_path(toy_tokenizer):
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(toy_tokenizer), n_embd=32, n_layer=1, n_head=2))
    assert "gpt2" in native_unsupported(gpt2, 512)
    assert HFGenerator(gpt2, toy_tokenizer).engine == "transformers"
    with pytest.raises(ValueError, match="engine='native' cannot run GPT2LMHeadModel: model type 'gpt2'"):
        HFGenerator(gpt2, toy_tokenizer, engine="native")
    windowed = MistralForCausalLM(MistralConfig(**COMMON, sliding_window=32))
    assert "sliding-window" in native_unsupported(windowed, 512)
    assert native_unsupported(windowed, 32) is None  # no sequence can outgrow the window


def test_slot_lengths_roll_back_and_grow(toy_tokenizer):
    model = tiny("qwen2")
    eng = NativeCachedModel(model, pad_id=0, max_len=300)
    eng.new(0, list(range(1, 260)))  # more than the first 256 columns: the slots grow
    eng.run([0])
    assert eng.cache.lengths[eng.states[0].slot] == 259 and eng.cache.capacity >= 259
    eng.truncate(0, 9)
    assert eng.cache.lengths[eng.states[0].slot] == 250 == eng.states[0].n_cached
    eng.append(0, list(range(60)))
    with pytest.raises(RuntimeError, match="raise max_len"):
        eng.run([0])


def decoders(paths, engine_a, engine_b, **cfg):
    config = RSDConfig(max_new_tokens=48, max_step_tokens=10, **cfg)
    return [RewardGuidedDecoder(HFGenerator.from_pretrained(paths["draft"], engine=e),
                                HFGenerator.from_pretrained(paths["target"], engine=e), every_other_step, config)
            for e in (engine_a, engine_b)]


def trace(result):
    return [(s.source, s.accepted, s.token_ids) for s in result.steps]


def test_native_engine_matches_transformers_path(tiny_paths):
    plain, native = decoders(tiny_paths, "transformers", "native")
    assert native.target.engine == "native" and plain.target.engine == "transformers"
    for batch in (PROMPTS, *[[p] for p in PROMPTS]):
        for x, y in zip(plain.generate(batch), native.generate(batch)):
            assert trace(x) == trace(y)
            assert x.stats.draft.prefill_tokens == y.stats.draft.prefill_tokens
            assert x.stats.target.decode_tokens == y.stats.target.decode_tokens
            assert x.stats.target.flops == pytest.approx(y.stats.target.flops)
    assert native.draft.cached.states == {} and len(native.draft.cached.cache._free) == native.draft.cached.cache.slots


@pytest.mark.parametrize("engine", ["native", "transformers", "fast"])
def test_speculated_rewrite_is_lossless_greedy(tiny_paths, engine):
    config = dict(max_new_tokens=48, max_step_tokens=10)
    on, off = (RewardGuidedDecoder(HFGenerator.from_pretrained(tiny_paths["draft"], engine=engine),
                                   HFGenerator.from_pretrained(tiny_paths["target"], engine=engine), every_other_step,
                                   RSDConfig(speculative_rewrite=flag, **config)) for flag in (True, False))
    calls = []
    for a, b in zip(on.generate(PROMPTS, callbacks=[Recorder(calls)]), off.generate(PROMPTS)):
        assert trace(a) == trace(b)  # the same steps, the same target text
        assert a.stats.rewritten_steps == b.stats.rewritten_steps > 0
        assert b.stats.speculated_tokens == 0
        assert b.stats.rewrite_forwards == sum(s.num_tokens for s in b.steps if s.source == "target")
        assert a.stats.target.decode_tokens == b.stats.target.decode_tokens
    # each rewrite: one verification forward, then one per token after the kept prefix and the target's next
    expected = sum(1 + max(0, e.num_tokens - e.speculated_tokens - 1) for e in calls)
    assert sum(r.stats.rewrite_forwards for r in on.generate(PROMPTS)) == expected


class Recorder:
    def __init__(self, out):
        self.out = out

    def on_target_invocation(self, event):
        self.out.append(event)


def test_a_draft_that_agrees_with_the_target_costs_one_forward_per_rewrite(tiny_paths):
    """Draft = target (same weights): every rejected step is kept whole by the verification forward."""
    config = RSDConfig(max_new_tokens=40, max_step_tokens=8)
    same = RewardGuidedDecoder(HFGenerator.from_pretrained(tiny_paths["target"]),
                               HFGenerator.from_pretrained(tiny_paths["target"]), every_other_step, config)
    scratch = RewardGuidedDecoder(HFGenerator.from_pretrained(tiny_paths["target"]),
                                  HFGenerator.from_pretrained(tiny_paths["target"]), every_other_step,
                                  config.model_copy(update={"speculative_rewrite": False}))
    for a, b in zip(same.generate(PROMPTS), scratch.generate(PROMPTS)):
        assert trace(a) == trace(b)
        rewrites = [s for s in a.steps if s.source == "target"]
        assert a.stats.rewritten_steps == len(rewrites) > 0
        assert a.stats.speculated_tokens == sum(s.num_tokens for s in rewrites)
        assert a.stats.rewrite_forwards == a.stats.rewritten_steps  # one forward each
        assert b.stats.rewrite_forwards == sum(s.num_tokens for s in rewrites)  # one per token from scratch


def test_verify_greedy_keeps_the_agreeing_prefix():
    logits = torch.full((4, 5), -1.0)
    for row, best in enumerate([2, 4, 1, 3]):
        logits[row, best] = 1.0
    greedy = SamplingConfig()
    assert verify(logits, [2, 4, 1], None, greedy, None) == (3, 3)  # all kept; the 4th row is the next token
    assert verify(logits, [2, 0, 1], None, greedy, None) == (1, 4)
    assert verify(logits, [0, 4, 1], None, greedy, None) == (0, 2)


@pytest.mark.parametrize("draft_greedy", [False, True])
@pytest.mark.slow
def test_verify_sampling_draws_the_targets_distribution(draft_greedy):
    """Whatever the draft proposes (drawn from q, or its argmax when greedy), the first token written has
    the target's distribution p: the speculative-sampling rule, checked over many seeded draws."""
    gen = torch.Generator().manual_seed(0)
    p_logits = torch.tensor([[1.0, 0.2, -0.5, 0.7], [0.0, 0.0, 0.0, 0.0]])
    q = torch.softmax(torch.tensor([-0.5, 1.5, 0.3, 0.0]), -1)
    sampling = SamplingConfig(temperature=1.0)
    p = torch.softmax(p_logits[0], -1)
    counts = torch.zeros(4)
    n = 20000
    for _ in range(n):
        x = int(torch.argmax(q)) if draft_greedy else int(torch.multinomial(q, 1, generator=gen))
        k, nxt = verify(p_logits, [x], None if draft_greedy else q[None], sampling, gen)
        counts[x if k == 1 else nxt] += 1
    assert torch.allclose(counts / n, p, atol=0.015), (counts / n, p)


def test_sampled_rewrite_keeps_tokens_and_runs(tiny_paths):
    sampled = SamplingConfig(temperature=0.8, top_p=0.95)
    dec = RewardGuidedDecoder(HFGenerator.from_pretrained(tiny_paths["target"]),
                              HFGenerator.from_pretrained(tiny_paths["target"]), every_other_step,
                              RSDConfig(max_new_tokens=40, max_step_tokens=8, draft_sampling=sampled,
                                        target_sampling=sampled, seed=3))
    a, b = dec.generate(PROMPTS), dec.generate(PROMPTS)
    assert [r.text for r in a] == [r.text for r in b]  # seeded: reproducible
    stats = [r.stats for r in a]
    assert sum(s.rewritten_steps for s in stats) > 0
    # Same weights and the same sampling config: p == q, so every proposed token is kept.
    assert sum(s.speculated_tokens for s in stats) == sum(
        st.num_tokens for r in a for st in r.steps if st.source == "target")


@pytest.mark.slow
def test_native_engine_on_smollm2_matches_transformers():
    """A real checkpoint (SmolLM2-135M-Instruct, Llama architecture, tied embeddings): the same logits
    within 1e-4 in fp32, and the same greedy text as transformers' ``generate``."""
    from tiny_models import smollm2_gguf

    gen = HFGenerator.from_pretrained(smollm2_gguf(), dtype="float32")
    assert gen.engine == "native"
    prompt = gen.render_prompt([{"role": "user", "content": "Why is the sky blue? Answer in two sentences."}])
    with torch.no_grad():
        ref = gen.model(torch.tensor([prompt])).logits[0]
        want = gen.model.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False)[0, len(prompt):].tolist()
    fwd = gen.cached.forward
    cache = fwd.new_cache(1)
    got = fwd(torch.tensor([prompt[:-5]]), [0], [0], cache)[0]
    tail = fwd(torch.tensor([prompt[-5:]]), [0], [len(prompt) - 5], cache)[0]
    assert torch.allclose(torch.cat([got, tail]), ref, atol=1e-4)
    gen.set_step_delimiters(["\x00never\x00"])
    gen.start(0, prompt)
    step = gen.generate_step([0], [40])[0]
    cut = next((i + 1 for i, t in enumerate(want) if t in gen.eos_ids), len(want))
    assert step.token_ids == want[:cut]


def test_target_only_rows_write_their_steps_back_to_back(tiny_paths):
    """Target only, batch 3: on the native engine a sequence starts its next step the token its last one
    ends (the others' steps are not waited for); the steps and texts equal the step-by-step path's, and
    each step's events go out as it ends."""
    config = RSDConfig(threshold=1.0, max_new_tokens=40, max_step_tokens=6)
    native = RewardGuidedDecoder(HFGenerator.from_pretrained(tiny_paths["draft"]),
                                 HFGenerator.from_pretrained(tiny_paths["target"]), None, config)
    plain = RewardGuidedDecoder(HFGenerator.from_pretrained(tiny_paths["draft"], engine="transformers"),
                                HFGenerator.from_pretrained(tiny_paths["target"], engine="transformers"), None, config)
    seen: list = []
    forwards0 = native.target.cached.forwards
    a = native.generate(PROMPTS, callbacks=[seen.append])
    b = plain.generate(PROMPTS)
    for x, y in zip(a, b):
        assert trace(x) == trace(y) and x.text == y.text and x.finish_reason == y.finish_reason
        assert x.stats.target.decode_tokens == y.stats.target.decode_tokens
        assert x.stats.target.flops == pytest.approx(y.stats.target.flops)
    steps = [e for e in seen if type(e).__name__ == "StepEvent"]
    assert [e.step_index for e in steps if e.sequence_index == 0] == list(range(len(a[0].steps)))
    # one prompt read, then one forward per token of the longest sequence: never one per step boundary
    longest = max(sum(s.num_tokens for s in r.steps) for r in a)
    assert native.target.cached.forwards - forwards0 == longest
    ends = [e for e in seen if type(e).__name__ == "RSDResult"]
    assert len(ends) == 3 and native.target.cached.states == {}


def test_a_callback_error_mid_run_stops_it_and_frees_every_sequence(tiny_paths):
    dec = RewardGuidedDecoder(HFGenerator.from_pretrained(tiny_paths["draft"]),
                              HFGenerator.from_pretrained(tiny_paths["target"]), None,
                              RSDConfig(threshold=1.0, max_new_tokens=40, max_step_tokens=6))

    class Stop(Exception):
        pass

    def boom(event):
        if type(event).__name__ == "StepEvent" and event.step_index == 2:
            raise Stop("the caller went away")

    with pytest.raises(Stop):  # the caller's own error, not wrapped as a model failure
        dec.generate(PROMPTS, callbacks=[boom])
    assert dec.target.cached.states == {}
    assert [r.text for r in dec.generate(PROMPTS)]  # and the decoder runs on


def _spy_batches(gen, monkeypatch):
    sizes = []
    real = gen.generate_step

    def spy(seqs, budgets, *a, **kw):
        sizes.append(len(seqs))
        return real(seqs, budgets, *a, **kw)

    monkeypatch.setattr(gen, "generate_step", spy)
    return sizes


def staggered(q, prev, step):
    """Rejects different sequences' steps at different step indices."""
    return 0.0 if (len(prev) + len(q)) % 3 == 1 else 1.0


@pytest.mark.parametrize("options", [{}, {"target_batch": None, "target_wait_s": 1e-9}])
def test_scheduled_rsd_decides_as_lockstep_rounds(tiny_paths, monkeypatch, options):
    """Without rounds, each sequence gets the same steps, rewards and decisions as in lockstep rounds;
    only when the target runs changes: with target_batch=None once no sequence is left drafting (fuller
    batches), by default (target_batch=1, or no wait) as soon as a step is rejected."""
    prompts = PROMPTS + ["Dan has 7 cats and 2 dogs.", "Eve reads 3 books a week."]
    cfg = RSDConfig(max_new_tokens=40, max_step_tokens=6)

    def make(**update):
        return RewardGuidedDecoder(HFGenerator.from_pretrained(tiny_paths["draft"]),
                                   HFGenerator.from_pretrained(tiny_paths["target"]), staggered,
                                   cfg.model_copy(update=update))

    full, eager, rounds = make(target_batch=None), make(**options), make(scheduler="lockstep")
    sizes_full, sizes_eager = _spy_batches(full.target, monkeypatch), _spy_batches(eager.target, monkeypatch)
    seen: list = []
    ref = rounds.generate(prompts)
    for got in (full.generate(prompts), eager.generate(prompts, callbacks=[seen.append])):
        for x, y in zip(got, ref):
            assert trace(x) == trace(y) and x.text == y.text
            assert [s.reward for s in x.steps] == [s.reward for s in y.steps]
            assert x.stats.target.decode_tokens == y.stats.target.decode_tokens
    assert sum(sizes_full) == sum(sizes_eager) > 0  # the same rewrites, batched differently
    assert len(sizes_eager) > len(sizes_full) and max(sizes_full) > 1
    for i in range(len(prompts)):  # each sequence's events in order, its end last
        mine = [e for e in seen if getattr(e, "sequence_index", getattr(e, "index", None)) == i]
        steps = [e.step_index for e in mine if type(e).__name__ == "StepEvent"]
        assert steps == sorted(steps) and type(mine[-1]).__name__ == "RSDResult"
    for dec in (full, eager):
        assert dec.draft.cached.states == {} and dec.target.cached.states == {}


@pytest.mark.parametrize("score_batch, options", [(3, {"target_batch": None}), (3, {}), (100, {"target_batch": None})])
def test_ended_steps_wait_to_be_scored_together(tiny_paths, score_batch, options):
    """With score_batch, a sequence whose step ended leaves the draft's batch until that many steps
    wait (or no sequence is left writing); the PRM then scores them in one call. Decisions, texts and
    rewards stay those of lockstep rounds; the PRM is called less often, with more steps per call."""
    prompts = PROMPTS + ["Dan has 7 cats and 2 dogs.", "Eve reads 3 books a week.", "Fay has 9 pens."]
    cfg = RSDConfig(max_new_tokens=40, max_step_tokens=6)
    calls: dict[str, list[int]] = {}

    def make(name, **update):
        dec = RewardGuidedDecoder(HFGenerator.from_pretrained(tiny_paths["draft"]),
                                  HFGenerator.from_pretrained(tiny_paths["target"]), staggered,
                                  cfg.model_copy(update=update))
        real = dec.reward.score
        calls[name] = []

        def spy(ids, steps):
            calls[name].append(len(ids))
            return real(ids, steps)

        dec.reward.score = spy
        return dec

    ref = make("lockstep", scheduler="lockstep").generate(prompts)
    each = make("each").generate(prompts)
    grouped = make("grouped", score_batch=score_batch, **options).generate(prompts)
    for got in (each, grouped):
        for x, y in zip(got, ref):
            assert trace(x) == trace(y) and x.text == y.text
            assert [s.reward for s in x.steps] == [s.reward for s in y.steps]
    assert sum(calls["grouped"]) == sum(calls["each"])  # every step scored once (draft and target steps)
    assert len(calls["grouped"]) <= len(calls["each"])
    if options:  # (with the target run at once, its rewrites' scores come between the groups)
        assert len(calls["grouped"]) < len(calls["each"])
    assert max(calls["grouped"]) >= min(score_batch, len(prompts))


def test_a_callback_error_in_a_scheduled_run_frees_every_sequence(tiny_paths):
    dec = RewardGuidedDecoder(HFGenerator.from_pretrained(tiny_paths["draft"]),
                              HFGenerator.from_pretrained(tiny_paths["target"]), every_other_step,
                              RSDConfig(max_new_tokens=40, max_step_tokens=6))

    def boom(event):
        if type(event).__name__ == "StepEvent" and event.step_index == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dec.generate(PROMPTS, callbacks=[boom])
    assert dec.draft.cached.states == {} and dec.target.cached.states == {}
    assert [r.text for r in dec.generate(PROMPTS)]


def test_a_causal_lm_prm_reads_its_steps_on_the_native_engine(toy):
    """The toy PRM (a Qwen2 causal LM) scores through the native engine, the same as through transformers."""
    from rsd_core.rewards.likelihood import LikelihoodPRM
    from rsd_core.runtime.cached_model import CachedModel

    prm = toy.reward
    assert isinstance(prm.cached, NativeCachedModel)
    plain = LikelihoodPRM(prm.model, prm.tokenizer, name="plain")
    plain.cached = CachedModel(prm.model, 0, keep_last_logits_only=False)
    conv = [{"role": "user", "content": "What is 12 + 30?"}]
    steps = ["12 + 30 = 42\n\n", "The answer is \\boxed{42}"]
    for i, r in enumerate((prm, plain)):
        r.start(900 + i, conv)
    got = [prm.score([900], [s])[0] for s in steps]
    want = [plain.score([901], [s])[0] for s in steps]
    assert got == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert got == pytest.approx(plain.score_solution(conv, steps), rel=1e-4, abs=1e-6)
    prm.release([900])
    plain.release([901])


def test_from_pretrained_takes_the_engine_and_refuses_an_unknown_one():
    from rsd_core.toy import toy_model_paths

    p = toy_model_paths()
    dec = RewardGuidedDecoder.from_pretrained(p["draft"], p["target"], p["prm"], engine="transformers")
    assert dec.draft.engine == dec.target.engine == "transformers"
    with pytest.raises(ValueError, match="engine='bogus'"):
        RewardGuidedDecoder.from_pretrained(p["draft"], p["target"], p["prm"], engine="bogus")
