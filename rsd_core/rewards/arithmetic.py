"""A rule-based reward: re-compute every ``a op b = c`` in a step.

Safe on hostile text: expressions are matched by a regular expression over plain numbers (never
evaluated as code), numbers are bounded in length, and powers are bounded in size.

Example:
    >>> arithmetic_reward("", [], "12 + 5 = 17 and 3 * 4 = 12")
    1.0
    >>> arithmetic_reward("", [], "12 + 5 = 18")
    0.0
    >>> arithmetic_reward("", [], "The answer is \\\\boxed{17}.")  # nothing to check: neutral
    0.5
"""

from __future__ import annotations

import re
from fractions import Fraction

_NUM = r"-?\d{1,30}(?:\.\d{1,30})?"
_EQ = re.compile(rf"(?<![\w.])({_NUM})\s*([-+*/×÷^])\s*({_NUM})\s*=\s*({_NUM})(?![\w.]|\d)")
MAX_EXPONENT = 64


def _apply(a: Fraction, op: str, b: Fraction) -> Fraction | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op in "*×":
        return a * b
    if op in "/÷":
        return None if b == 0 else a / b
    if b.denominator != 1 or abs(b) > MAX_EXPONENT or abs(a) > 10**12:  # bounded: no 9^999999999
        return None
    return a ** int(b)


def check_equations(text: str) -> tuple[int, int]:
    """(correct, checked) over every ``a op b = c`` in ``text``."""
    ok = n = 0
    for a, op, b, c in _EQ.findall(text):
        value = _apply(Fraction(a), op, Fraction(b))
        n += 1
        ok += value is not None and value == Fraction(c)
    return ok, n


def arithmetic_reward(question: str, previous_steps: list[str], step: str, neutral: float = 0.5) -> float:
    """1 if every equation in the step holds, 0 if any is wrong, ``neutral`` if there is none."""
    ok, n = check_equations(step)
    return neutral if n == 0 else float(ok == n)
