"""The methods RSD is compared with, run on the same machinery (same caches, same accounting).

- ``target_only`` / ``draft_only``: δ = 1 / δ = 0 (every step from one model; no PRM).
- ``best_of_n``: N sampled solutions, each step scored by the PRM, the best aggregate kept.
- ``majority_vote``: N sampled solutions, the most common final answer kept.
- ``speculative_decoding``: token-level speculative decoding through transformers' assisted
  generation (its own loop; counted by hooks on the models' forwards).

Example:
    >>> dec = RewardGuidedDecoder.from_pretrained()                                  # doctest: +SKIP
    >>> best = best_of_n(dec, ["Ann has 12 apples. She buys 5 more. How many?"], n=4)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

import torch

from rsd_core.accounting import FlopCounter, GenerationStats, ModelUsage
from rsd_core.backends.base import Prompt
from rsd_core.config import RSDConfig, SamplingConfig
from rsd_core.decoder import RewardGuidedDecoder
from rsd_core.events import FinishReason, RSDResult

Aggregate = Literal["min", "prod", "last", "mean"]
DEFAULT_SAMPLING = SamplingConfig(temperature=0.7, top_p=0.95)


def target_only(dec: RewardGuidedDecoder, prompts: Sequence[Prompt], config: RSDConfig | None = None,
                **kw: Any) -> list[RSDResult]:
    cfg = (config or dec.config).model_copy(update={"threshold": 1.0, "weighting": "binary"})
    return dec.generate(prompts, config=cfg, **kw)


def draft_only(dec: RewardGuidedDecoder, prompts: Sequence[Prompt], config: RSDConfig | None = None,
               **kw: Any) -> list[RSDResult]:
    cfg = (config or dec.config).model_copy(update={"threshold": 0.0, "weighting": "binary"})
    return dec.generate(prompts, config=cfg, **kw)


def aggregate_rewards(rewards: list[float], how: Aggregate = "min") -> float:
    """One score for a whole solution from its step rewards."""
    if not rewards:
        return 0.0
    if how == "min":
        return min(rewards)
    if how == "prod":
        return math.prod(rewards)
    if how == "last":
        return rewards[-1]
    if how == "mean":
        return sum(rewards) / len(rewards)
    raise ValueError(f"unknown aggregate {how!r}; use min, prod, last or mean")


def _samples(dec: RewardGuidedDecoder, prompts: Sequence[Prompt], n: int, source: Literal["draft", "target"],
             config: RSDConfig | None, score: bool, callbacks: Iterable[Any] = ()) -> list[list[RSDResult]]:
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    base = config or dec.config
    sampling = base.draft_sampling if source == "draft" else base.target_sampling
    if sampling.greedy:  # N greedy samples would all be the same
        sampling = DEFAULT_SAMPLING
    key = "draft_sampling" if source == "draft" else "target_sampling"
    cfg = base.model_copy(update={"threshold": 0.0 if source == "draft" else 1.0, "weighting": "binary",
                                  key: sampling, "seed": base.seed if base.seed is not None else 0})
    flat = [p for p in prompts for _ in range(n)]
    if source == "target" and score:
        # Target samples scored by the PRM: run draft-only on a decoder whose draft is the target.
        runner = RewardGuidedDecoder(dec.target, dec.target, dec.reward, cfg)
        cfg = cfg.model_copy(update={"threshold": 0.0, "draft_sampling": sampling})
        results = runner.generate(flat, config=cfg, callbacks=callbacks, score_every_step=True)
    else:
        results = dec.generate(flat, config=cfg, callbacks=callbacks, score_every_step=score)
    return [results[i * n:(i + 1) * n] for i in range(len(prompts))]


def _combined(chosen: RSDResult, group: list[RSDResult], index: int) -> RSDResult:
    """The chosen sample, with the stats of all N (they all cost compute)."""
    stats = GenerationStats()
    for r in group:
        stats.merge(r.stats)
    return RSDResult(index=index, text=chosen.text, steps=chosen.steps, stats=stats, finish_reason=chosen.finish_reason,
                     num_prompt_tokens=chosen.num_prompt_tokens, num_output_tokens=chosen.num_output_tokens)


def best_of_n(dec: RewardGuidedDecoder, prompts: Sequence[Prompt], n: int = 8, *,
              source: Literal["draft", "target"] = "draft", aggregate: Aggregate = "min",
              config: RSDConfig | None = None) -> list[RSDResult]:
    """N samples per prompt from ``source``; keep the one whose step rewards aggregate highest."""
    if dec.reward is None:
        raise ValueError("best-of-N needs a reward model")
    out = []
    for i, group in enumerate(_samples(dec, prompts, n, source, config, score=True)):
        scores = [aggregate_rewards([s.reward for s in r.accepted_steps if s.reward is not None], aggregate)
                  for r in group]
        out.append(_combined(group[max(range(n), key=scores.__getitem__)], group, i))
    return out


def majority_vote(dec: RewardGuidedDecoder, prompts: Sequence[Prompt], n: int = 8, *,
                  extract_answer: Callable[[str], str | None], source: Literal["draft", "target"] = "draft",
                  config: RSDConfig | None = None) -> list[RSDResult]:
    """N samples per prompt; keep one whose extracted answer is the most common."""
    out = []
    for i, group in enumerate(_samples(dec, prompts, n, source, config, score=False)):
        answers = [extract_answer(r.text) for r in group]
        votes = Counter(a for a in answers if a is not None)
        best = votes.most_common(1)[0][0] if votes else None
        chosen = next((r for r, a in zip(group, answers) if a == best), group[0])
        out.append(_combined(chosen, group, i))
    return out


class _ForwardLog:
    """Every forward a model makes (new tokens, cached tokens), through a hook, for methods that run
    inside transformers' ``generate`` rather than our own loop."""

    def __init__(self, model: Any):
        self.flops = FlopCounter.for_model(model)
        self.calls: list[tuple[int, int]] = []
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        n_new = int(ids.shape[-1]) if ids is not None else int(kwargs["inputs_embeds"].shape[1])
        past = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers 5.2x calls it ``cache``
        n_cached = int(past.get_seq_length()) if past is not None and hasattr(past, "get_seq_length") else 0
        self.calls.append((n_new, n_cached))

    def close(self) -> None:
        self._handle.remove()

    def usage(self, prompt_tokens: int, generated: int) -> ModelUsage:
        read = sum(n for n, _ in self.calls)
        return ModelUsage(prefill_tokens=min(prompt_tokens, read), decode_tokens=max(0, read - prompt_tokens),
                          flops=sum(self.flops.forward(n, c) for n, c in self.calls),
                          paper_flops=self.flops.weights(generated), calls=len(self.calls))


def _quiet_generate(model: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``generate`` without the deprecation notice assisted generation triggers inside transformers."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return model.generate(*args, **kwargs)
    finally:
        hf_logging.set_verbosity(level)


@contextlib.contextmanager
def _same_vocabulary(draft: Any, target: Any, same_tokenizer: bool) -> Iterator[None]:
    """One tokenizer, embedding tables padded to different sizes (Qwen2.5-Math-1.5B has 151936 rows, -7B
    152064): the ids mean the same to both models, so assisted generation on ids is exact, but transformers
    compares the configs' vocab sizes and asks for text re-tokenization. Align the draft's for the call."""
    d_cfg, t_cfg = draft.config.get_text_config(), target.config.get_text_config()
    if not same_tokenizer or d_cfg.vocab_size == t_cfg.vocab_size:
        yield
        return
    saved = d_cfg.vocab_size
    d_cfg.vocab_size = t_cfg.vocab_size
    try:
        yield
    finally:
        d_cfg.vocab_size = saved


def speculative_decoding(dec: RewardGuidedDecoder, prompts: Sequence[Prompt], config: RSDConfig | None = None,
                         num_assistant_tokens: int | None = None) -> list[RSDResult]:
    """Token-level speculative decoding (transformers' assisted generation): the draft proposes tokens,
    the target verifies them in one forward. No PRM. Its output equals the target's alone (greedy).

    Runs one prompt at a time (assisted generation takes batch 1). In the stats, draft steps are the
    draft's proposed tokens and accepted steps the tokens the target kept; target invocations are
    the target's verification forwards. FLOPs and tokens come from hooks on both models' forwards.
    """
    from transformers import GenerationConfig

    cfg = config or dec.config
    draft, target = getattr(dec.draft, "model", None), getattr(dec.target, "model", None)
    if draft is None or target is None:
        raise ValueError("speculative decoding (sd) needs transformers models for both draft and target")
    sampling = cfg.target_sampling
    gen_cfg = GenerationConfig(**{k: v for k, v in target.generation_config.to_dict().items()
                                  if k in ("eos_token_id", "pad_token_id", "bos_token_id")})
    gen_cfg.max_new_tokens = cfg.max_new_tokens
    gen_cfg.do_sample = not sampling.greedy
    if not sampling.greedy:
        gen_cfg.temperature, gen_cfg.top_p = sampling.temperature, sampling.top_p
    if num_assistant_tokens is not None:
        gen_cfg.num_assistant_tokens = num_assistant_tokens
        gen_cfg.num_assistant_tokens_schedule = "constant"
    extra: dict[str, Any] = {}
    if not dec.same_tokenizer:  # universal assisted decoding: candidates re-tokenized between models
        extra = {"tokenizer": dec.target.tokenizer, "assistant_tokenizer": dec.draft.tokenizer}
    eos: set[int] = set(getattr(dec.target, "eos_ids", set()))
    out = []
    with dec.exclusive():
        for i, prompt in enumerate(prompts):
            ids = dec.target.render_prompt(prompt)
            if cfg.seed is not None:
                torch.manual_seed(cfg.seed + i)
            logs = _ForwardLog(draft), _ForwardLog(target)
            t0 = time.perf_counter()
            try:
                x = torch.tensor([ids], device=target.device)
                with _same_vocabulary(draft, target, dec.same_tokenizer):
                    seq = _quiet_generate(target, x, attention_mask=torch.ones_like(x), assistant_model=draft,
                                          generation_config=gen_cfg, **extra)[0, len(ids):].tolist()
            finally:
                for log in logs:
                    log.close()
            d_log, t_log = logs
            rounds, proposed = len(t_log.calls), len(d_log.calls)
            verified = sum(n for n, _ in t_log.calls) - len(ids)  # candidate tokens the target read
            stats = GenerationStats(
                draft_steps=proposed, accepted_draft_steps=max(0, min(proposed, len(seq) - rounds)),
                target_steps=rounds, target_invocations=rounds, draft=d_log.usage(len(ids), proposed),
                target=t_log.usage(len(ids), verified), wall_time_s=time.perf_counter() - t0)
            finish: FinishReason = "eos" if seq and seq[-1] in eos else "max_new_tokens"
            text = dec.target.tokenizer.decode(seq, skip_special_tokens=True)
            out.append(RSDResult(index=i, text=text, steps=[], stats=stats, finish_reason=finish,
                                 num_prompt_tokens=len(ids), num_output_tokens=len(seq)))
    return out
