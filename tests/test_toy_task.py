"""The toy task's generator: the held-out stream stays fixed, and the reach variant says what it means."""

from __future__ import annotations

import re

import pytest

from rsd_core.eval.datasets import load_examples
from rsd_core.toy.task import REACH, make_problems, number_words

# Written here from English, not from the library: units, teens and tens, hyphenated.
_UNITS = "zero one two three four five six seven eight nine".split()
_TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if i > 1}


def _read_number(text: str) -> int:
    if text.isdigit():
        return int(text)
    if text == "a dozen":
        return 12
    if text in _UNITS:
        return _UNITS.index(text)
    if text in _TEENS:
        return 10 + _TEENS.index(text)
    tens, _, ones = text.partition("-")
    return _TENS[tens] + (_UNITS.index(ones) if ones else 0)


_NUMBER = r"(\d+|a dozen|[a-z]+(?:-[a-z]+)?)"


def _numbers(question: str) -> list[str]:
    start = re.match(rf"\w+ has {_NUMBER} \w+\.", question)
    assert start, question
    return [start.group(1)] + [n for _, n in re.findall(rf"{_VERBS} {_NUMBER}", question)]


_VERBS = "(buys|finds|gets|wins|gives away|loses|sells|uses)"


def _solve(question: str) -> int:
    """The answer of a toy question read from its words alone."""
    start = re.match(rf"\w+ has {_NUMBER} \w+\.", question)
    assert start, question
    value = _read_number(start.group(1))
    for verb, amount in re.findall(rf"{_VERBS} {_NUMBER}", question):
        n = _read_number(amount)
        value = value - n if verb in ("gives away", "loses", "sells", "uses") else value + n
    return value


def test_the_held_out_stream_is_the_one_the_trio_was_measured_on():
    """The reach variant draws nothing extra in the default generator, so the held-out set, the trio's
    training streams and every documented figure stay as they were."""
    first = make_problems(1, 20250101)[0]
    assert first.question == (
        "Kim has 22 stamps. She wins 19 more. She buys 27 more. She buys 21 more. She finds 61 more. "
        "How many stamps does Kim have now?")
    assert all(2 <= len(p.changes) <= 4 and all(n.isdigit() for n in _numbers(p.question))
               for p in make_problems(500, 7))


def test_number_words():
    assert [number_words(n) for n in (0, 7, 12, 19, 20, 45, 99)] == [
        "zero", "seven", "twelve", "nineteen", "twenty", "forty-five", "ninety-nine"]
    assert all(_read_number(number_words(n)) == n for n in range(100))
    with pytest.raises(ValueError, match="0-99"):
        number_words(100)


def test_the_reach_variant_has_one_change_problems_and_numbers_in_words():
    problems = make_problems(400, 3, reach=True)
    changes = {len(p.changes) for p in problems}
    assert changes == set(range(REACH["min_changes"], REACH["max_changes"] + 1)) and 1 in changes
    worded = [p for p in problems if any(not n.isdigit() for n in _numbers(p.question))]
    assert 0.5 < len(worded) / len(problems) < 0.95  # most problems have a number in words, not all
    for p in problems:  # the solution (in digits) answers the question as its words say
        assert _solve(p.question) == p.answer, p.question
        assert p.solution_steps[-1] == f"The answer is \\boxed{{{p.answer}}}." and not re.search("[a-z]+-", p.solution)


def test_toy_reach_is_an_eval_dataset():
    ex = load_examples("toy-reach", n=3)
    assert [e.id for e in ex] == [f"toy-reach-20250101-{i}" for i in range(3)]
    assert all(int(e.answer) == _solve(e.question) for e in ex)
    assert load_examples("toy", n=3) != ex
