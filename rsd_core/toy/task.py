"""The toy task: short arithmetic word problems solved in ``"\\n\\n"``-separated steps.

Every problem is a start value followed by two to four changes; the reference solution writes one
``a op b = c`` line per change and ends with ``The answer is \\boxed{c}.``. The *reach* variant
(``make_problem(rng, **REACH)``) also has one-change problems, numbers stated in words ("Ann has twelve
apples", "a dozen") and changes that take away from small counts ("12 + 5 = 17", then "17 - 3 = 14");
the solution still writes digits. The task is deliberately
small enough to train three models on a laptop CPU, yet hard enough (carries, borrows, numbers up
to three digits) that a tiny draft model slips on some steps while a larger target rarely does.

Example:
    >>> p = make_problem(random.Random(0))
    >>> p.question.startswith(p.name)
    True
    >>> p.solution_steps[-1].startswith("The answer is")
    True
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TypedDict

NAMES = ["Ann", "Ben", "Cal", "Dee", "Eli", "Fay", "Gus", "Ivy", "Jon", "Kim", "Lou", "Max"]
PRONOUNS = {"Ann": "She", "Dee": "She", "Fay": "She", "Ivy": "She", "Kim": "She", "Lou": "She"}
ITEMS = ["apples", "coins", "books", "cards", "shells", "stamps", "pens", "rocks"]
ADD_PHRASES = ["buys {b} more", "finds {b} more", "gets {b} more", "wins {b} more"]
SUB_PHRASES = ["gives away {b}", "loses {b}", "sells {b}", "uses {b}"]

STEP_DELIMITER = "\n\n"

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]



class ProblemShape(TypedDict):
    min_changes: int
    max_changes: int
    worded: float
    subtract_above: int


# The reach variant: what the target learns besides the held-out task's 2-4 changes in digits.
REACH: ProblemShape = {"min_changes": 1, "max_changes": 4, "worded": 0.35, "subtract_above": 3}


def number_words(n: int) -> str:
    """``n`` (0-99) in words, as a question might state it: ``number_words(45) == "forty-five"``."""
    if not 0 <= n <= 99:
        raise ValueError(f"number_words takes 0-99, not {n}")
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")


def _say(n: int, rng: random.Random, worded: float) -> str:
    """A number in a question: digits, or (with probability ``worded``) words; draws nothing when 0."""
    if worded <= 0 or rng.random() >= worded:
        return str(n)
    return "a dozen" if n == 12 and rng.random() < 0.5 else number_words(n)


@dataclass(frozen=True)
class ToyProblem:
    """One problem with its reference step-by-step solution."""

    name: str
    item: str
    start: int
    changes: tuple[tuple[str, int], ...]  # ("+" | "-", amount)
    question: str = field(compare=False)

    @property
    def answer(self) -> int:
        return self.values[-1]

    @property
    def values(self) -> list[int]:
        vals = [self.start]
        for op, b in self.changes:
            vals.append(vals[-1] + b if op == "+" else vals[-1] - b)
        return vals

    @property
    def solution_steps(self) -> list[str]:
        vals = self.values
        steps = [f"{vals[i]} {op} {b} = {vals[i + 1]}" for i, (op, b) in enumerate(self.changes)]
        steps.append(f"The answer is \\boxed{{{vals[-1]}}}.")
        return steps

    @property
    def solution(self) -> str:
        return STEP_DELIMITER.join(self.solution_steps)


def make_problem(rng: random.Random, min_changes: int = 2, max_changes: int = 4, worded: float = 0.0,
                 subtract_above: int = 20) -> ToyProblem:
    """Draw one problem; every intermediate value stays in [0, 999].

    ``subtract_above``: a change may take away only from a count above this (the held-out task: 20).
    ``worded``: the chance that each number in the question is stated in words (0 draws nothing extra, so
    the default stream of problems is the one the held-out set and the trio's training have always used)."""
    name = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    pron = PRONOUNS.get(name, "He")
    start = rng.randint(10, 99)
    value = start
    changes: list[tuple[str, int]] = []
    sentences = [f"{name} has {_say(start, rng, worded)} {item}."]
    for _ in range(rng.randint(min_changes, max_changes)):
        if value > subtract_above and rng.random() < 0.5:
            op, b = "-", rng.randint(2, min(value - 1, 99))
            phrase = rng.choice(SUB_PHRASES)
        else:
            op, b = "+", rng.randint(2, 99)
            phrase = rng.choice(ADD_PHRASES)
        value = value + b if op == "+" else value - b
        changes.append((op, b))
        sentences.append(f"{pron} {phrase.format(b=_say(b, rng, worded))}.")
    sentences.append(f"How many {item} does {name} have now?")
    return ToyProblem(name, item, start, tuple(changes), " ".join(sentences))


def make_problems(n: int, seed: int, reach: bool = False) -> list[ToyProblem]:
    """``n`` problems from a seeded generator (held-out sets use seeds the training never sees).

    ``reach=True``: the reach variant (``REACH``: one-change problems, numbers in words, small counts)."""
    rng = random.Random(seed)
    return [make_problem(rng, **REACH) if reach else make_problem(rng) for _ in range(n)]
