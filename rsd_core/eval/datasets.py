"""Evaluation sets: the toy task (held out from training) and any JSONL of question/answer pairs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rsd_core.toy.task import make_problems

TOY_EVAL_SEED = 20250101  # training draws its problems from another stream


@dataclass(frozen=True)
class Example:
    id: str
    question: str
    answer: str


def toy_examples(n: int, seed: int = TOY_EVAL_SEED) -> list[Example]:
    return [Example(f"toy-{seed}-{i}", p.question, str(p.answer)) for i, p in enumerate(make_problems(n, seed))]


def jsonl_examples(path: str | Path, question_field: str = "question", answer_field: str = "answer",
                   n: int | None = None) -> list[Example]:
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            row = json.loads(line)
            for key in (question_field, answer_field):
                if key not in row:
                    raise KeyError(f"{path}:{i + 1} has no field {key!r} (fields: {sorted(row)})")
            out.append(Example(str(row.get("id", row.get("unique_id", i))), str(row[question_field]),
                               str(row[answer_field])))
            if n is not None and len(out) >= n:
                break
    return out


def load_examples(dataset: str, n: int | None = None, seed: int = TOY_EVAL_SEED, question_field: str = "question",
                  answer_field: str = "answer") -> list[Example]:
    """``toy`` or a path to a ``.jsonl`` file."""
    if dataset == "toy":
        return toy_examples(n or 300, seed)
    if Path(dataset).is_file():
        return jsonl_examples(dataset, question_field, answer_field, n)
    raise ValueError(f"unknown dataset {dataset!r}: use 'toy' or the path of a JSONL file")
