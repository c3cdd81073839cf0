"""Run methods over a dataset and summarise accuracy against compute.

Methods: ``target``, ``draft``, ``rsd`` (at the config's δ, or ``rsd:0.5`` for another δ), ``sd``
(token-level speculative decoding; ``sd:K`` for K draft tokens per round), ``bon:N`` (best-of-N from
the draft, PRM-scored) and ``majority:N``.

With ``records`` (a path) every problem's record is appended to a JSONL file as soon as its batch ends
(flushed and fsynced), and a run started again with the same file skips what is there: an
interrupted run resumes where it stopped, and the summary is the same as an uninterrupted run's.

Example:
    >>> summary = evaluate(dec, toy_examples(20), ["target", "rsd"])   # doctest: +SKIP
    >>> summary["rsd"]["accuracy"]                                     # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rsd_core.baselines import best_of_n, draft_only, majority_vote, speculative_decoding, target_only
from rsd_core.config import RSDConfig
from rsd_core.decoder import RewardGuidedDecoder
from rsd_core.eval.answers import extract_answer, grade
from rsd_core.eval.datasets import Example
from rsd_core.eval.prompts import PromptStyle, build_messages, resolve_style
from rsd_core.events import RSDResult

MODELS = ("draft", "target", "reward")
RECORDS_VERSION = 1

Runner = Callable[[RewardGuidedDecoder, list[Any]], list[RSDResult]]


def parse_method(method: str, cfg: RSDConfig) -> tuple[str, Runner]:
    name, _, arg = method.strip().partition(":")
    try:
        if name == "target" and not arg:
            return method, lambda dec, ps: target_only(dec, ps, cfg)
        if name == "draft" and not arg:
            return method, lambda dec, ps: draft_only(dec, ps, cfg)
        if name == "rsd":
            delta = float(arg) if arg else cfg.threshold
            c = cfg.model_copy(update={"threshold": delta})
            RSDConfig.model_validate(c.model_dump())  # δ outside [0, 1] fails here, naming the field
            return method, lambda dec, ps: dec.generate(ps, config=c)
        if name == "sd":
            k = int(arg) if arg else None
            if k is not None and k < 1:
                raise ValueError
            return method, lambda dec, ps: speculative_decoding(dec, ps, cfg, num_assistant_tokens=k)
        if name in ("bon", "majority"):
            n = int(arg or 8)
            if n < 1:
                raise ValueError
            if name == "bon":
                return method, lambda dec, ps: best_of_n(dec, ps, n, config=cfg)
            return method, lambda dec, ps: majority_vote(dec, ps, n, extract_answer=extract_answer, config=cfg)
    except ValueError as e:
        if "threshold" in str(e):
            raise ValueError(f"method {method!r}: δ must lie in [0, 1]") from None
        raise ValueError(f"method {method!r}: bad argument {arg!r}") from None
    raise ValueError(f"unknown method {method!r}: use target, draft, rsd[:δ], sd[:K], bon:N or majority:N")


def expand_methods(methods: Sequence[str], deltas: Sequence[float] = ()) -> list[str]:
    """``rsd`` with a list of δ becomes ``rsd:δ`` for each; duplicates dropped, order kept."""
    out: list[str] = []
    for m in methods:
        m = m.strip()
        items = [f"rsd:{d:g}" for d in deltas] if m == "rsd" and deltas else [m]
        out.extend(i for i in items if i and i not in out)
    return out


def method_delta(method: str, cfg: RSDConfig) -> float | None:
    name, _, arg = method.partition(":")
    if name == "rsd":
        return float(arg) if arg else cfg.threshold
    return {"target": 1.0, "draft": 0.0}.get(name)


# ------------------------------------------------------------------------------------------ summaries


def summarize(method: str, records: list[dict[str, Any]], delta: float | None = None) -> dict[str, Any]:
    n = len(records)
    stats = [r["stats"] for r in records]
    judged = sum(s["draft_steps"] for s in stats)
    accepted = sum(s["accepted_draft_steps"] for s in stats)
    target_steps = sum(s["target_steps"] for s in stats)
    tokens = {m: {"prefill": sum(s[m]["prefill_tokens"] for s in stats),
                  "decode": sum(s[m]["decode_tokens"] for s in stats)} for m in MODELS}
    flops = {m: sum(s[m]["flops"] for s in stats) for m in MODELS}
    flops["total"] = sum(flops[m] for m in MODELS)
    paper = {m: sum(s[m].get("paper_flops", 0.0) for s in stats) for m in MODELS}
    paper["total"] = sum(paper[m] for m in MODELS)
    wall = sum(r.get("wall_s", 0.0) for r in records)
    per_q = (lambda x: x / n) if n else (lambda x: 0.0)
    token_level = method.startswith("sd")
    return {
        "method": method,
        "delta": delta,
        "n": n,
        "accuracy": per_q(sum(r["correct"] for r in records)),
        "acceptance_rate": accepted / judged if judged else None,
        "acceptance_unit": "token" if token_level else "step",
        # share of the solution's steps the target wrote (for sd: verification rounds per proposed token)
        "target_step_rate": (target_steps / (accepted + target_steps) if accepted + target_steps else None)
        if not token_level else None,
        "target_invocations": sum(s["target_invocations"] for s in stats),
        "target_invocations_per_question": per_q(sum(s["target_invocations"] for s in stats)),
        "tokens": tokens,
        "flops": flops,  # full count: every token each model reads or writes, prefill and attention included
        "paper_flops": paper,  # the paper's count: 2·N per generated (PRM: scored) token
        "flops_per_question": per_q(flops["total"]),
        "paper_flops_per_question": per_q(paper["total"]),
        "wall_s": round(wall, 3),
        "wall_s_per_question": per_q(wall),
    }


def _flops(x: float) -> str:
    for unit, div in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def markdown_table(summaries: dict[str, dict[str, Any]]) -> str:
    """Accuracy against compute, one row per method."""
    rows = ["| method | n | accuracy | acceptance | target calls/q | draft tok (prefill/decode) | "
            "target tok (prefill/decode) | PRM tok | FLOPs/q (paper) | FLOPs/q (full) | wall s |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries.values():
        t = s["tokens"]
        acc = "-" if s["acceptance_rate"] is None else f"{s['acceptance_rate']:.2f}"
        if s["acceptance_rate"] is not None and s.get("acceptance_unit") == "token":
            acc += " (tokens)"
        rows.append(
            f"| {s['method']} | {s['n']} | {s['accuracy']:.3f} | {acc} | {s['target_invocations_per_question']:.2f} | "
            f"{t['draft']['prefill']}/{t['draft']['decode']} | {t['target']['prefill']}/{t['target']['decode']} | "
            f"{t['reward']['prefill']} | {_flops(s['paper_flops_per_question'])} | "
            f"{_flops(s['flops_per_question'])} | {s['wall_s']:.1f} |")
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------ records


def _differences(now: Any, then: Any, where: str = "") -> list[str]:
    """Each setting that differs, by its dotted name: ``config.threshold is 0.5 now, 0.7 in the file``."""
    if isinstance(now, dict) and isinstance(then, dict):
        out = []
        for k in sorted(set(now) | set(then), key=str):
            out += _differences(now.get(k), then.get(k), f"{where}.{k}" if where else str(k))
        return out
    return [] if now == then else [f"{where} is {now!r} now, {then!r} in the file"]


class RecordsInUseError(ValueError):
    """Another process is writing the same records file."""


_held: dict[str, Any] = {}  # records files this process holds the lock of


def _lock_for_writing(path: Path) -> Any:
    """An exclusive lock on ``path`` for this process (released when it exits, even if killed). Another
    process is refused; this process may open the same file again (a resume after an interruption)."""
    key = str(path.resolve())
    if key in _held:
        return _held[key]
    try:
        import fcntl
    except ImportError:  # no flock on this platform: one writer is the caller's business
        return None
    f = open(path.with_name(path.name + ".lock"), "a+")  # noqa: SIM115 - held open for the process's lifetime
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise RecordsInUseError(f"{path} is being written by another rsd eval (pid {holder}); wait for it to "
                                "finish, or use another --out") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    _held[key] = f
    return f


class RecordStore:
    """Per-problem results in a JSONL file: a header line naming the run, then one line per problem.

    Opening an existing file checks that it belongs to the same run (dataset, models, config) and
    drops a last line cut off by a kill, so appending continues from the last complete record. One
    process at a time writes a file: a second one opening it while the first runs is refused
    (``RecordsInUseError``) instead of both appending the same records. ``overwrite`` starts it again.
    """

    def __init__(self, path: str | Path, meta: dict[str, Any], overwrite: bool = False):
        self.path = Path(path)
        self.meta = {"type": "meta", "version": RECORDS_VERSION, **meta}
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_for_writing(self.path)
        if overwrite and self.path.exists():
            self.path.unlink()
        if self.path.exists() and self.path.stat().st_size:
            self._load()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write_lines([self.meta])

    def _load(self) -> None:
        raw = self.path.read_bytes()
        good_end = 0
        lines = raw.split(b"\n")
        for i, line in enumerate(lines):
            is_last = i == len(lines) - 1
            if not line.strip():
                if not is_last:
                    good_end += len(line) + 1
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if is_last or all(not x.strip() for x in lines[i + 1:]):
                    break  # a record cut off mid-write: drop it, it will be redone
                raise ValueError(f"{self.path}:{i + 1} is not valid JSON; the records file is damaged") from None
            if is_last:  # complete JSON but no newline: keep it, finish the line
                good_end += len(line)
                self._take(row, i)
                with open(self.path, "r+b") as f:
                    f.truncate(good_end)
                    f.seek(good_end)
                    f.write(b"\n")
                return
            good_end += len(line) + 1
            self._take(row, i)
        if good_end != len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(good_end)

    def _take(self, row: dict[str, Any], i: int) -> None:
        if row.get("type") == "meta":
            diff = _differences({k: v for k, v in self.meta.items() if k != "type"},
                                {k: v for k, v in row.items() if k != "type"})
            if diff:
                raise ValueError(f"{self.path} holds results of another run: {'; '.join(diff[:6])}. Use another "
                                 "--out, or --overwrite to start again (overwrite=True)")
            return
        if i == 0:
            raise ValueError(f"{self.path} does not start with a run header; is it an rsd eval records file?")
        self.records.setdefault((row["method"], row["id"]), row)

    def _write_lines(self, rows: list[dict[str, Any]]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())

    def done(self, method: str, ex_id: str) -> dict[str, Any] | None:
        return self.records.get((method, ex_id))

    def add(self, rows: list[dict[str, Any]]) -> None:
        new = [r for r in rows if (r["method"], r["id"]) not in self.records]
        self._write_lines(new)
        for r in new:
            self.records[(r["method"], r["id"])] = r


# ------------------------------------------------------------------------------------------ the loop


def evaluate(dec: RewardGuidedDecoder, examples: Sequence[Example], methods: Sequence[str],
             config: RSDConfig | None = None, batch_size: int = 16, progress: bool = True,
             grade: Callable[[str | None, str], bool] = grade, prompt_style: PromptStyle = "plain",
             records: RecordStore | None = None,
             on_record: Callable[[dict[str, Any]], None] | None = None) -> dict[str, dict[str, Any]]:
    """Every method over every example; returns ``{method: summary}``.

    ``prompt_style``: how each question is put (``rsd_core.eval.prompts``; ``auto`` picks by the
    target model). ``records``: a ``RecordStore`` to append to and resume from.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    cfg = config or dec.config
    style = resolve_style(prompt_style, getattr(dec.target, "model", None))
    runs = [parse_method(m, cfg) for m in methods]  # every name checked before any model work
    out: dict[str, dict[str, Any]] = {}
    for name, run in runs:
        done = {ex.id: records.done(name, ex.id) for ex in examples} if records else {}
        todo = [ex for ex in examples if not done.get(ex.id)]
        kept = [r for r in done.values() if r]
        bar = tqdm(total=len(examples), initial=len(kept), desc=name, disable=not progress, leave=True)
        fresh: list[dict[str, Any]] = []
        n_correct = sum(r["correct"] for r in kept)
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            t0 = time.perf_counter()
            results = run(dec, [build_messages(ex.question, style) for ex in batch])
            share = (time.perf_counter() - t0) / len(batch)
            rows = []
            for ex, res in zip(batch, results):
                pred = extract_answer(res.text)
                rows.append({"method": name, "id": ex.id, "answer": ex.answer, "predicted": pred,
                             "correct": bool(grade(pred, ex.answer)), "text": res.text,
                             "finish_reason": res.finish_reason, "wall_s": share, "stats": res.stats.to_dict()})
            if records:
                records.add(rows)
            fresh.extend(rows)
            for r in rows:
                if on_record:
                    on_record(r)
            bar.update(len(batch))
            n_correct += sum(bool(r["correct"]) for r in rows)
            bar.set_postfix(acc=f"{n_correct / (len(kept) + len(fresh)):.3f}")
        bar.close()
        by_id = {r["id"]: r for r in kept + fresh}
        out[name] = summarize(name, [by_id[ex.id] for ex in examples], method_delta(name, cfg))
    return out
