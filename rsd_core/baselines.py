"""The methods RSD is compared with, run on the same machinery (same caches, same accounting).

- ``target_only`` / ``draft_only``: δ = 1 / δ = 0 (every step from one model; no PRM).
- ``best_of_n``: N sampled solutions, each step scored by the PRM, the best aggregate kept.
- ``majority_vote``: N sampled solutions, the most common final answer kept.

Example:
    >>> dec = RewardGuidedDecoder.from_pretrained()                                  # doctest: +SKIP
    >>> best = best_of_n(dec, ["Ann has 12 apples. She buys 5 more. How many?"], n=4)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from rsd_core.backends.base import Prompt
from rsd_core.config import RSDConfig, SamplingConfig
from rsd_core.decoder import RewardGuidedDecoder
from rsd_core.events import GenerationStats, RSDResult

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
        results = runner._run(flat, cfg, list(callbacks), None, None, score_all=True)
    else:
        results = dec._run(flat, cfg, list(callbacks), None, None, score_all=score)
    return [results[i * n:(i + 1) * n] for i in range(len(prompts))]


def _combined(chosen: RSDResult, group: list[RSDResult], index: int) -> RSDResult:
    """The chosen sample, with the stats of all N (they all cost compute)."""
    stats = GenerationStats()
    for r in group:
        stats.merge(r.stats)
    return RSDResult(index, chosen.text, chosen.steps, stats, chosen.finish_reason, chosen.num_prompt_tokens,
                     chosen.num_output_tokens)


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
