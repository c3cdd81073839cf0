"""Evaluation sets: GSM8K, MATH500, the toy task, and any JSONL or HF dataset of question/answer pairs.

``load_examples`` takes:

- ``"toy"``: the toy arithmetic task (held out from the toy trio's training);
- ``"toy-reach"``: the toy task's wider variant: one-change problems and numbers stated in words too;
- ``"gsm8k"`` / ``"math500"``: from the Hugging Face hub through ``datasets`` (``openai/gsm8k``,
  ``HuggingFaceH4/MATH-500``), or from a local copy with ``data_file=``;
- a path to a ``.jsonl`` file: GSM8K rows (``question``, ``answer`` ending in ``#### N``) and MATH
  rows (``problem``, ``answer``) are recognised; other files name their fields;
- any other hub dataset name (``owner/name``), with its fields and split named.

Example:
    >>> ex = load_examples("toy", n=2)
    >>> ex[0].id, ex[0].answer.isdigit()
    ('toy-20250101-0', True)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsd_core.eval.answers import extract_gsm8k
from rsd_core.toy.task import make_problems

TOY_EVAL_SEED = 20250101  # training draws its problems from another stream


@dataclass(frozen=True)
class Example:
    id: str
    question: str
    answer: str


@dataclass(frozen=True)
class DatasetFormat:
    """Where a dataset keeps its question and answer, and how its reference answer is read."""

    question_field: str
    answer_field: str
    hub_name: str | None = None
    hub_config: str | None = None
    split: str = "test"
    gsm8k_answer: bool = False  # the reference is a worked solution ending in "#### N"

    def example(self, row: dict[str, Any], index: int, where: str) -> Example:
        for key in (self.question_field, self.answer_field):
            if key not in row:
                raise KeyError(f"{where} has no field {key!r} (fields: {sorted(row)}); "
                               "name the fields with question_field= / answer_field=")
        answer = str(row[self.answer_field])
        if self.gsm8k_answer:
            parsed = extract_gsm8k(answer)
            if parsed is None:
                raise ValueError(f"{where}: GSM8K answer without a '#### N' line: {answer[-80:]!r}")
            answer = parsed
        ident = row.get("id", row.get("unique_id", row.get("idx", index)))
        return Example(str(ident), str(row[self.question_field]), answer)


FORMATS = {
    "gsm8k": DatasetFormat("question", "answer", "openai/gsm8k", "main", "test", gsm8k_answer=True),
    "math500": DatasetFormat("problem", "answer", "HuggingFaceH4/MATH-500", None, "test"),
}


def toy_examples(n: int, seed: int = TOY_EVAL_SEED, reach: bool = False) -> list[Example]:
    tag = "toy-reach" if reach else "toy"
    return [Example(f"{tag}-{seed}-{i}", p.question, str(p.answer))
            for i, p in enumerate(make_problems(n, seed, reach=reach))]


def _rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i + 1} is not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{i + 1} is not a JSON object")
            yield i + 1, row


def detect_format(row: dict[str, Any]) -> DatasetFormat | None:
    """GSM8K or MATH, from one row's fields; None when neither fits."""
    if "problem" in row and "answer" in row:
        return FORMATS["math500"]
    if "question" in row and "####" in str(row.get("answer", "")):
        return FORMATS["gsm8k"]
    return None


def _take(rows: Iterable[tuple[int, dict[str, Any]]], fmt: DatasetFormat | None, where: str, n: int | None,
          question_field: str | None, answer_field: str | None) -> list[Example]:
    out: list[Example] = []
    if fmt is not None and (question_field or answer_field):  # named fields override the known layout
        fmt = DatasetFormat(question_field or fmt.question_field, answer_field or fmt.answer_field,
                            gsm8k_answer=fmt.gsm8k_answer)
    for line, row in rows:
        if fmt is None:  # decided once, from the first row
            fmt = detect_format(row) if not (question_field or answer_field) else None
            fmt = fmt or DatasetFormat(question_field or "question", answer_field or "answer")
        out.append(fmt.example(row, len(out), f"{where}:{line}" if line else f"{where} row {len(out)}"))
        if n is not None and len(out) >= n:
            break
    return out


def jsonl_examples(path: str | Path, question_field: str | None = None, answer_field: str | None = None,
                   n: int | None = None, fmt: DatasetFormat | None = None) -> list[Example]:
    """Rows of a JSONL file; GSM8K and MATH layouts are recognised, other layouts name their fields."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such dataset file: {path}")
    out = _take(_rows(path), fmt, str(path), n, question_field, answer_field)
    if not out:
        raise ValueError(f"{path} holds no examples")
    return out


def hub_examples(name: str, config: str | None = None, split: str = "test", n: int | None = None,
                 fmt: DatasetFormat | None = None, question_field: str | None = None,
                 answer_field: str | None = None) -> list[Example]:
    """A dataset from the Hugging Face hub (or its local cache), through the ``datasets`` package."""
    try:
        import datasets
    except ImportError:
        raise ImportError(f"loading {name!r} from the hub needs the 'datasets' package: pip install 'rsd[eval]' "
                          "(or pass a local JSONL copy with --data-file)") from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # offline, no cache, a renamed dataset: the same way out in every case
        raise FileNotFoundError(f"could not load {name!r} from the hub ({type(e).__name__}: {str(e)[:200]}); "
                                "pass a local JSONL copy with --data-file (data_file=)") from None
    return _take(((0, dict(r)) for r in ds), fmt, f"{name}[{split}]", n, question_field, answer_field)


def load_examples(dataset: str, n: int | None = None, seed: int = TOY_EVAL_SEED, *, data_file: str | None = None,
                  split: str | None = None, question_field: str | None = None,
                  answer_field: str | None = None) -> list[Example]:
    """The first ``n`` examples of ``dataset`` (all when ``n`` is None; the toy task defaults to 300)."""
    if n is not None and n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if dataset in ("toy", "toy-reach"):
        return toy_examples(n or 300, seed, reach=dataset == "toy-reach")
    key = dataset.lower().replace("-", "")
    if key in FORMATS:
        fmt = FORMATS[key]
        if data_file:
            return jsonl_examples(data_file, question_field, answer_field, n, fmt=fmt)
        assert fmt.hub_name is not None
        return hub_examples(fmt.hub_name, fmt.hub_config, split or fmt.split, n, fmt, question_field, answer_field)
    if Path(dataset).is_file():
        return jsonl_examples(dataset, question_field, answer_field, n)
    if "/" in dataset and not dataset.endswith(".jsonl"):
        return hub_examples(dataset, None, split or "test", n, None, question_field, answer_field)
    raise ValueError(f"unknown dataset {dataset!r}: use toy, toy-reach, gsm8k, math500, a JSONL path or a hub name "
                     "(owner/name)")
