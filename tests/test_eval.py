"""Answer extraction, grading, datasets and the evaluation summary."""

from __future__ import annotations

import json

import pytest

from rsd_core.eval.answers import extract_answer, extract_boxed, grade_numeric
from rsd_core.eval.datasets import jsonl_examples, load_examples, toy_examples
from rsd_core.toy.task import make_problems


@pytest.mark.parametrize("text, expected", [
    (r"The answer is \boxed{17}.", "17"),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"first \boxed{3} then \boxed{ {a}+{b} }", "{a}+{b}"),
    (r"\boxed {5}", "5"),
    (r"no box here", None),
    (r"broken \boxed{12", None),
])
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_answer_falls_back_to_gsm8k_marker_then_last_number():
    assert extract_answer("so 3 + 4 = 7\n#### 1,234") == "1234"
    assert extract_answer("we get 12 and then 1,500 apples") == "1500"
    assert extract_answer("nothing") is None


def test_grade_numeric():
    assert grade_numeric("17", "17") and grade_numeric("17.0", "17") and grade_numeric("1,000", "1000")
    assert not grade_numeric("18", "17") and not grade_numeric(None, "17")
    assert grade_numeric("x+1", "x+1") and not grade_numeric("x+1", "x+2")


def test_toy_problems_are_consistent_and_seeded():
    for p in make_problems(200, seed=5):
        assert p.solution_steps[-1] == f"The answer is \\boxed{{{p.answer}}}."
        assert all(0 <= v <= 999 for v in p.values)
        assert extract_answer(p.solution) == str(p.answer)
    assert toy_examples(5) == toy_examples(5) and toy_examples(5, seed=1) != toy_examples(5)


def test_jsonl_loader_reads_named_fields_and_reports_missing_ones(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"problem": f"q{i}", "solution": str(i)}) for i in range(5)) + "\n")
    ex = jsonl_examples(path, "problem", "solution", n=3)
    assert [e.question for e in ex] == ["q0", "q1", "q2"] and ex[2].answer == "2"
    with pytest.raises(KeyError, match="question"):
        jsonl_examples(path)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_examples("no-such-dataset")
