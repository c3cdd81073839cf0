"""The RSD loop's mechanics, on tiny random-weight models (the method's effect is tested on the toy trio)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer

from rsd_core import RewardGuidedDecoder, RSDConfig, SamplingConfig
from rsd_core.backends.base import Step
from rsd_core.backends.hf import HFGenerator
from rsd_core.errors import InvalidPromptError, ModelLoadError, PromptTooLongError, UnknownRewardModelError
from rsd_core.events import RSDResult, StepEvent, TargetInvocationEvent

PROMPTS = [
    "Ann has 12 apples. She buys 3 more.",
    [{"role": "user", "content": "Ben has 30 pens. He loses 4. How many pens does Ben have now?"}],
    "Cal has 5 books.",
]


def every_other_step(q, prev, step):
    """Rejects draft steps 1, 3, 5, ... (scoring also sees target steps, which is fine: it's deterministic)."""
    return 0.0 if len(prev) % 2 == 1 else 1.0


def make(paths, reward=every_other_step, **cfg) -> RewardGuidedDecoder:
    config = RSDConfig(max_new_tokens=cfg.pop("max_new_tokens", 48), max_step_tokens=cfg.pop("max_step_tokens", 10), **cfg)
    d = HFGenerator.from_pretrained(paths["draft"])
    t = HFGenerator.from_pretrained(paths["target"])
    return RewardGuidedDecoder(d, t, reward, config)


def hf_greedy(path, prompt, max_new_tokens) -> list[int]:
    """What plain transformers `generate` writes, for comparison."""
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    gen = HFGenerator(model, tok)
    ids = torch.tensor([gen.render_prompt(prompt)])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


# ---------------------------------------------------------------- δ = 0 / δ = 1


@pytest.mark.parametrize("threshold, model", [(0.0, "draft"), (1.0, "target")])
def test_threshold_extremes_equal_single_model_generate(tiny_paths, threshold, model):
    dec = make(tiny_paths, threshold=threshold, max_new_tokens=40)
    for prompt in PROMPTS:
        res = dec.generate([prompt])[0]
        assert [t for s in res.steps for t in s.token_ids] == hf_greedy(tiny_paths[model], prompt, 40)
        assert {s.source for s in res.steps} == {model}
    stats = res.stats
    other = stats.target if model == "draft" else stats.draft
    assert other.decode_tokens == 0 and other.prefill_tokens == 0


def test_threshold_one_rejects_even_a_perfect_reward(tiny_paths):
    dec = make(tiny_paths, reward=lambda q, p, s: 1.0, threshold=1.0)
    res = dec.generate(PROMPTS[:1])[0]
    assert all(s.source == "target" for s in res.steps) and res.stats.draft_steps == 0


# ---------------------------------------------------------------- rejection and the target


def test_rejected_step_is_rewritten_by_target_from_same_prefix(tiny_paths):
    dec = make(tiny_paths, reward=lambda q, prev, step: 0.0 if len(prev) == 1 else 1.0)
    res = dec.generate([PROMPTS[1]])[0]
    first, rejected, rewritten = res.steps[0], res.steps[1], res.steps[2]
    assert first.source == "draft" and first.accepted
    assert rejected.source == "draft" and not rejected.accepted and rejected.step_index == 1
    assert rewritten.source == "target" and rewritten.accepted and rewritten.step_index == 1
    # The target continues from prompt + the accepted first step, exactly as it would on its own.
    target = HFGenerator.from_pretrained(tiny_paths["target"])
    target.start(0, target.render_prompt(PROMPTS[1]) + first.token_ids)  # same tokenizer: ids handed over
    expected = target.generate_step([0], [10])[0]
    assert rewritten.text == expected.text
    assert res.text.startswith(first.text + rewritten.text)


class FullRereadGenerator(HFGenerator):
    """Reference: no cache at all, the whole sequence re-read for every token."""

    def start(self, seq, prompt_ids):
        self.seqs = getattr(self, "seqs", {})
        self.seqs[seq] = list(prompt_ids)

    def extend(self, seqs, token_ids):
        for s, ids in zip(seqs, token_ids):
            self.seqs[s] += ids

    @torch.inference_mode()
    def generate_step(self, seqs, budgets):
        out = []
        for s, budget in zip(seqs, budgets):
            new: list[int] = []
            while True:
                logits = self.model(input_ids=torch.tensor([self.seqs[s] + new])).logits[0, -1]
                new.append(int(logits.argmax()))
                text = self.tokenizer.decode(new, skip_special_tokens=True)
                eos = new[-1] in self.eos_ids
                if eos or "\n\n" in text or len(new) >= budget:
                    break
            self.seqs[s] += new
            out.append(Step(new, text, eos, "\n\n" in text))
        return out

    def rollback(self, seqs, n_tokens):
        for s, n in zip(seqs, n_tokens):
            del self.seqs[s][len(self.seqs[s]) - n:]

    def num_tokens(self, seq):
        return len(self.seqs[seq])

    def usage(self, seq):
        from rsd_core.events import ModelUsage

        return ModelUsage()

    def release(self, seqs):
        pass


def test_cached_decoding_matches_full_reread(tiny_paths):
    cached = make(tiny_paths)
    ref_d = FullRereadGenerator.from_pretrained(tiny_paths["draft"])
    ref_t = FullRereadGenerator.from_pretrained(tiny_paths["target"])
    ref = RewardGuidedDecoder(ref_d, ref_t, every_other_step, cached.config)
    for prompt in PROMPTS:
        a, b = cached.generate([prompt])[0], ref.generate([prompt])[0]
        assert [(s.source, s.accepted, s.text) for s in a.steps] == [(s.source, s.accepted, s.text) for s in b.steps]
        assert a.text == b.text


def test_prefill_counts_show_no_rereading(tiny_paths):
    dec = make(tiny_paths, max_new_tokens=60)
    events: list[object] = []
    res = dec.generate([PROMPTS[1]], callbacks=[events.append])[0]
    invocations = [e for e in events if isinstance(e, TargetInvocationEvent)]
    prompt_len = res.num_prompt_tokens
    target_steps = [s for s in res.steps if s.source == "target"]
    draft_steps = [s for s in res.steps if s.source == "draft"]
    assert target_steps and any(s.accepted for s in draft_steps)
    # The target read its prompt once, then only the accepted draft tokens it had not seen.
    assert res.stats.target.prefill_tokens == prompt_len + sum(e.catch_up_tokens for e in invocations)
    assert sum(e.catch_up_tokens for e in invocations) <= sum(s.num_tokens for s in draft_steps if s.accepted)
    # The draft read its prompt once, then each target step that came before one of its own steps.
    handed = 0
    for i, s in enumerate(res.steps):
        if s.source == "target" and any(t.source == "draft" for t in res.steps[i + 1:]):
            handed += s.num_tokens
    assert res.stats.draft.prefill_tokens == prompt_len + handed
    assert res.stats.draft.decode_tokens == sum(s.num_tokens for s in draft_steps)
    assert res.stats.target.decode_tokens == sum(s.num_tokens for s in target_steps)


def test_different_tokenizers_hand_over_text(tiny_paths, toy_tokenizer, tmp_path):
    from rsd_core.toy.task import make_problems
    from rsd_core.toy.tokenizer import train_tokenizer

    other_tok = train_tokenizer([p.question + "\n\n" + p.solution for p in make_problems(300, seed=99)], vocab_size=300)
    assert other_tok.get_vocab() != toy_tokenizer.get_vocab()
    model = AutoModelForCausalLM.from_pretrained(tiny_paths["draft"])
    model.resize_token_embeddings(len(other_tok))
    draft = HFGenerator(model, other_tok)
    target = HFGenerator.from_pretrained(tiny_paths["target"])
    dec = RewardGuidedDecoder(draft, target, every_other_step, RSDConfig(max_new_tokens=40, max_step_tokens=10))
    assert not dec.same_tokenizer
    res = dec.generate([PROMPTS[1]])[0]
    # The draft read the target's steps re-tokenized with its own tokenizer, one step at a time.
    handed = sum(len(other_tok(s.text, add_special_tokens=False).input_ids)
                 for i, s in enumerate(res.steps)
                 if s.source == "target" and any(t.source == "draft" for t in res.steps[i + 1:]))
    assert handed > 0
    assert res.stats.draft.prefill_tokens == len(draft.render_prompt(PROMPTS[1])) + handed
    assert res.text == "".join(s.text for s in res.accepted_steps)


# ---------------------------------------------------------------- batching, determinism, sampling


def test_batch_of_different_lengths_equals_each_alone(tiny_paths):
    dec = make(tiny_paths)
    batched = dec.generate(PROMPTS)
    for prompt, b in zip(PROMPTS, batched):
        alone = dec.generate([prompt])[0]
        assert [(s.source, s.accepted, s.text) for s in b.steps] == [(s.source, s.accepted, s.text) for s in alone.steps]
        assert b.stats.draft.prefill_tokens == alone.stats.draft.prefill_tokens
        assert b.stats.target.decode_tokens == alone.stats.target.decode_tokens


def test_greedy_is_deterministic_and_sampling_reproducible_with_seed(tiny_paths):
    dec = make(tiny_paths)
    assert dec.generate(PROMPTS)[0].text == dec.generate(PROMPTS)[0].text
    hot = SamplingConfig(temperature=1.0, top_p=0.95, top_k=50)
    def run(seed):
        cfg = dec.config.model_copy(update={"seed": seed, "draft_sampling": hot, "target_sampling": hot})
        return [r.text for r in dec.generate(PROMPTS, config=cfg)]
    assert run(1) == run(1)
    assert run(1) != run(2)


def test_soft_weighting_accepts_stochastically_and_reproducibly(tiny_paths):
    dec = make(tiny_paths, reward=lambda q, p, s: 0.5, weighting="clip", seed=3, max_new_tokens=60)
    a = [s.accepted for s in dec.generate(PROMPTS[:1])[0].steps if s.source == "draft"]
    b = [s.accepted for s in dec.generate(PROMPTS[:1])[0].steps if s.source == "draft"]
    assert a == b and True in a and False in a


# ---------------------------------------------------------------- events


def test_events_arrive_in_order_during_generation(tiny_paths):
    dec = make(tiny_paths)
    log: list[object] = []

    class Recorder:
        def on_step(self, e):
            log.append(e)

        def on_target_invocation(self, e):
            log.append(e)

        def on_end(self, r):
            log.append(r)

    plain: list[object] = []
    results = dec.generate(PROMPTS[:2], callbacks=[Recorder(), plain.append])
    assert plain == log  # a plain callable gets every event too
    ends = [x for x in log if isinstance(x, RSDResult)]
    assert sorted(r.index for r in ends) == [0, 1]
    for i, res in enumerate(results):
        steps = [x for x in log if isinstance(x, StepEvent) and x.sequence_index == i]
        assert steps == res.steps  # every step was reported, in order, before the end
        assert [s.step_index for s in steps] == sorted(s.step_index for s in steps)
        end_pos = log.index(next(r for r in ends if r.index == i))
        assert all(log.index(s) < end_pos for s in steps)
        for k, x in enumerate(log):
            if isinstance(x, TargetInvocationEvent) and x.sequence_index == i:
                nxt = log[k + 1]
                assert isinstance(nxt, StepEvent) and nxt.source == "target" and nxt.step_index == x.step_index


def test_stop_string_ends_the_text_before_it(tiny_paths):
    dec = make(tiny_paths, threshold=1.0, max_new_tokens=40)
    full = dec.generate([PROMPTS[0]])[0].text
    stop = full[5:8]
    res = dec.generate([PROMPTS[0]], stop=[stop])[0]
    assert res.finish_reason == "stop" and res.text == full[: full.find(stop)]


def test_budgets_are_respected(tiny_paths):
    dec = make(tiny_paths, max_new_tokens=25, max_step_tokens=4)
    res = dec.generate(PROMPTS)
    for r in res:
        assert r.num_output_tokens <= 25
        assert all(s.num_tokens <= 4 for s in r.steps)
    res = dec.generate(PROMPTS[:1], config=dec.config.model_copy(update={"max_steps": 2}))[0]
    assert len(res.accepted_steps) <= 2


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("field, value", [("threshold", 1.5), ("threshold", -0.1), ("max_new_tokens", 0),
                                          ("weighting", "greedy"), ("step_delimiters", [""]), ("alpha", 0)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValidationError) as e:
        RSDConfig(**{field: value})
    assert field in str(e.value) and str(value)[:3] in str(e.value)


def test_bad_prompts_fail_before_any_model_work(tiny_paths):
    dec = make(tiny_paths)
    for bad, said in (([], "no prompts given"), ([[]], "non-empty list of messages, got []"),
                      ([[{"role": "wizard", "content": "hi"}]], "unknown role 'wizard'"),
                      ([[{"content": "no role"}]], "unknown role None"), ([42], "list of messages, got 42")):
        with pytest.raises(InvalidPromptError) as e:
            dec.generate(bad)
        assert said in str(e.value)
    with pytest.raises(PromptTooLongError, match="512"):
        dec.generate(["word " * 600])
    assert dec.draft.cached.states == {} and dec.target.cached.states == {}  # nothing left behind


def test_missing_or_wrong_checkpoints_get_clear_errors(tiny_paths, tmp_path):
    with pytest.raises(ModelLoadError, match="does-not-exist"):
        RewardGuidedDecoder.from_pretrained(str(tmp_path / "does-not-exist"), tiny_paths["target"], lambda *a: 1.0)
    with pytest.raises(UnknownRewardModelError, match="step_tag"):
        RewardGuidedDecoder.from_pretrained(tiny_paths["draft"], tiny_paths["target"], tiny_paths["draft"])
    with pytest.raises(ValueError, match="outside"):
        make(tiny_paths, reward=lambda *a: 3.0).generate(PROMPTS[:1])


def test_tools_reach_the_prompt_even_when_the_template_ignores_them(tiny_paths):
    gen = HFGenerator.from_pretrained(tiny_paths["target"])
    tools = [{"type": "function", "function": {"name": "add_numbers", "parameters": {"type": "object"}}}]
    chat = [{"role": "user", "content": "add 1 and 2"}]
    rendered = gen.tokenizer.decode(gen.render_prompt(chat, tools))
    assert "add_numbers" in rendered and "# Tools" in rendered  # the toy template renders tools itself
    gen.tokenizer.chat_template = (  # a template with no tools section, like SmolLM2-Instruct's
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    rendered = gen.tokenizer.decode(gen.render_prompt(chat, tools))
    assert "add_numbers" in rendered and "<tool_call>" in rendered and rendered.startswith("<|im_start|>system")
    assert "add_numbers" not in gen.tokenizer.decode(gen.render_prompt(chat))


# ---------------------------------------------------------------- forced reply start (tool_choice)


def test_reply_prefix_is_read_as_prompt_and_starts_the_text(tiny_paths):
    """Forcing the reply's start equals writing it into the prompt, for the models and the PRM."""
    seen: list[tuple[list[str], str]] = []

    def reward(q, prev, step):
        seen.append((list(prev), step))
        return 0.0 if len(prev) % 2 == 1 else 1.0

    prefix = "Ben has 30 pens. He loses"
    chat = [{"role": "user", "content": "Ben has 30 pens. He loses 4. How many pens does Ben have now?"}]
    forced = make(tiny_paths, reward=reward, threshold=0.5).generate([chat], reply_prefix=prefix)[0]
    first = seen[0]
    gen = HFGenerator.from_pretrained(tiny_paths["target"])
    written = gen.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) + prefix
    plain = make(tiny_paths, reward=lambda q, prev, step: reward(q, prev, step), threshold=0.5).generate(
        [written])[0]
    assert forced.text.startswith(prefix) and forced.text == prefix + plain.text
    assert [s.token_ids for s in forced.steps] == [s.token_ids for s in plain.steps]
    assert first == ([], prefix + forced.steps[0].text)  # the PRM scores the forced text with the first step
    assert forced.num_output_tokens == sum(len(s.token_ids) for s in forced.steps if s.accepted)  # forced: not counted
    assert forced.num_prompt_tokens == len(gen.render_prompt(chat, None, prefix))


def test_reply_prefix_must_be_text(tiny_paths):
    with pytest.raises(ValueError, match="reply_prefix must be a string"):
        make(tiny_paths).generate([PROMPTS[0]], reply_prefix=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_score_every_step_reports_rewards_where_nothing_is_decided(toy, threshold):
    cfg = toy.config.model_copy(update={"threshold": threshold, "max_new_tokens": 40})
    q = "Sam has 4 marbles and finds 3 more. How many marbles does Sam have?"
    plain = toy.generate(q, config=cfg)[0]
    scored = toy.generate(q, config=cfg, score_every_step=True)[0]
    assert plain.text == scored.text
    assert all(s.reward is None for s in plain.steps)
    assert all(isinstance(s.reward, float) and 0.0 <= s.reward <= 1.0 for s in scored.steps)
    assert scored.stats.reward.calls > 0 == plain.stats.reward.calls


def test_no_path_passes_transformers_a_deprecated_cache_argument(tiny_paths):
    """Every engine, the PRM's scorer and the baselines inside ``generate`` hand transformers its KV cache
    under the name the installed release takes (``cache`` from 5.2x on): no deprecation warning, so the
    library keeps working once ``past_key_values`` is gone (why the transformers pin could be lifted)."""
    import warnings

    from rsd_core.baselines import speculative_decoding

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for engine in ("native", "fast", "transformers"):
            dec = RewardGuidedDecoder.from_pretrained(tiny_paths["draft"], tiny_paths["target"], tiny_paths["prm"],
                                                      engine=engine, config=RSDConfig(max_new_tokens=12))
            dec.generate(PROMPTS[:2])
        speculative_decoding(dec, [PROMPTS[1]])
    assert not [str(w.message) for w in seen if "past_key_values" in str(w.message)]
