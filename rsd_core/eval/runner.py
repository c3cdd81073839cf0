"""Run methods over a dataset and summarise accuracy against compute.

Methods: ``target``, ``draft``, ``rsd`` (at the config's δ, or ``rsd:0.5`` for another δ),
``bon:N`` (best-of-N from the draft, PRM-scored) and ``majority:N``.

Example:
    >>> summary = evaluate(dec, toy_examples(20), ["target", "rsd"])   # doctest: +SKIP
    >>> summary["rsd"]["accuracy"]                                     # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from tqdm.auto import tqdm

from rsd_core.baselines import best_of_n, draft_only, majority_vote, target_only
from rsd_core.config import RSDConfig
from rsd_core.decoder import RewardGuidedDecoder
from rsd_core.eval.answers import extract_answer, grade_numeric
from rsd_core.eval.datasets import Example
from rsd_core.events import RSDResult

MODELS = ("draft", "target", "reward")


def parse_method(method: str, cfg: RSDConfig) -> tuple[str, Callable[..., list[RSDResult]]]:
    name, _, arg = method.partition(":")
    if name == "target":
        return method, lambda dec, ps: target_only(dec, ps, cfg)
    if name == "draft":
        return method, lambda dec, ps: draft_only(dec, ps, cfg)
    if name == "rsd":
        c = cfg.model_copy(update={"threshold": float(arg)}) if arg else cfg
        return method, lambda dec, ps: dec.generate(ps, config=c)
    if name in ("bon", "majority"):
        n = int(arg or 8)
        if name == "bon":
            return method, lambda dec, ps: best_of_n(dec, ps, n, config=cfg)
        return method, lambda dec, ps: majority_vote(dec, ps, n, extract_answer=extract_answer, config=cfg)
    raise ValueError(f"unknown method {method!r}: use target, draft, rsd[:delta], bon:N or majority:N")


def summarize(method: str, records: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    n = len(records)
    stats = [r["stats"] for r in records]
    judged = sum(s["draft_steps"] for s in stats)
    accepted = sum(s["accepted_draft_steps"] for s in stats)
    tokens = {m: {"prefill": sum(s[m]["prefill_tokens"] for s in stats),
                  "decode": sum(s[m]["decode_tokens"] for s in stats)} for m in MODELS}
    flops = {m: sum(s[m]["flops"] for s in stats) for m in MODELS}
    flops["total"] = sum(flops[m] for m in MODELS)
    return {
        "method": method,
        "n": n,
        "accuracy": sum(r["correct"] for r in records) / n if n else 0.0,
        "acceptance_rate": accepted / judged if judged else None,
        "target_invocations": sum(s["target_invocations"] for s in stats),
        "target_invocations_per_question": sum(s["target_invocations"] for s in stats) / n if n else 0.0,
        "tokens": tokens,
        "flops": flops,
        "flops_per_question": flops["total"] / n if n else 0.0,
        "wall_s": round(wall_s, 3),
    }


def evaluate(dec: RewardGuidedDecoder, examples: Sequence[Example], methods: Sequence[str],
             config: RSDConfig | None = None, batch_size: int = 16, progress: bool = True,
             grade: Callable[[str | None, str], bool] = grade_numeric,
             on_record: Callable[[dict[str, Any]], None] | None = None) -> dict[str, dict[str, Any]]:
    """Every method over every example; returns ``{method: summary}``."""
    cfg = config or dec.config
    out: dict[str, dict[str, Any]] = {}
    for method in methods:
        name, run = parse_method(method, cfg)
        records: list[dict[str, Any]] = []
        bar = tqdm(total=len(examples), desc=name, disable=not progress, leave=True)
        t0 = time.perf_counter()
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            results = run(dec, [[{"role": "user", "content": ex.question}] for ex in batch])
            for ex, res in zip(batch, results):
                pred = extract_answer(res.text)
                rec = {"method": name, "id": ex.id, "answer": ex.answer, "predicted": pred,
                       "correct": bool(grade(pred, ex.answer)), "text": res.text,
                       "stats": res.stats.to_dict()}
                records.append(rec)
                if on_record:
                    on_record(rec)
            bar.update(len(batch))
            bar.set_postfix(acc=f"{sum(r['correct'] for r in records) / len(records):.3f}")
        bar.close()
        out[name] = summarize(name, records, time.perf_counter() - t0)
    return out


def markdown_table(summaries: dict[str, dict[str, Any]]) -> str:
    """Accuracy against compute, one row per method."""
    rows = ["| method | n | accuracy | acceptance | target calls | draft tok (prefill/decode) | "
            "target tok (prefill/decode) | PRM tok | FLOPs/question | wall s |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries.values():
        t = s["tokens"]
        acc = "-" if s["acceptance_rate"] is None else f"{s['acceptance_rate']:.2f}"
        rows.append(
            f"| {s['method']} | {s['n']} | {s['accuracy']:.3f} | {acc} | {s['target_invocations']} | "
            f"{t['draft']['prefill']}/{t['draft']['decode']} | {t['target']['prefill']}/{t['target']['decode']} | "
            f"{t['reward']['prefill']} | {s['flops_per_question']:.3g} | {s['wall_s']:.1f} |"
        )
    return "\n".join(rows)

