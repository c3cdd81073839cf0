"""The toy task: short arithmetic word problems solved in ``"\\n\\n"``-separated steps.

Every problem is a start value followed by two to four changes; the reference solution writes one
``a op b = c`` line per change and ends with ``The answer is \\boxed{c}.``. The task is deliberately
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

NAMES = ["Ann", "Ben", "Cal", "Dee", "Eli", "Fay", "Gus", "Ivy", "Jon", "Kim", "Lou", "Max"]
PRONOUNS = {"Ann": "She", "Dee": "She", "Fay": "She", "Ivy": "She", "Kim": "She", "Lou": "She"}
ITEMS = ["apples", "coins", "books", "cards", "shells", "stamps", "pens", "rocks"]
ADD_PHRASES = ["buys {b} more", "finds {b} more", "gets {b} more", "wins {b} more"]
SUB_PHRASES = ["gives away {b}", "loses {b}", "sells {b}", "uses {b}"]

STEP_DELIMITER = "\n\n"


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


def make_problem(rng: random.Random, min_changes: int = 2, max_changes: int = 4) -> ToyProblem:
    """Draw one problem; every intermediate value stays in [0, 999]."""
    name = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    pron = PRONOUNS.get(name, "He")
    start = rng.randint(10, 99)
    value = start
    changes: list[tuple[str, int]] = []
    sentences = [f"{name} has {start} {item}."]
    for _ in range(rng.randint(min_changes, max_changes)):
        if value > 20 and rng.random() < 0.5:
            op, b = "-", rng.randint(2, min(value - 1, 99))
            phrase = rng.choice(SUB_PHRASES)
        else:
            op, b = "+", rng.randint(2, 99)
            phrase = rng.choice(ADD_PHRASES)
        value = value + b if op == "+" else value - b
        changes.append((op, b))
        sentences.append(f"{pron} {phrase.format(b=b)}.")
    sentences.append(f"How many {item} does {name} have now?")
    return ToyProblem(name, item, start, tuple(changes), " ".join(sentences))


def make_problems(n: int, seed: int) -> list[ToyProblem]:
    """``n`` problems from a seeded generator (held-out sets use seeds the training never sees)."""
    rng = random.Random(seed)
    return [make_problem(rng) for _ in range(n)]
