"""Answer extraction and grading.

Example:
    >>> extract_boxed(r"so \\boxed{\\frac{1}{2}} and finally \\boxed{42}.")
    '42'
    >>> extract_answer("The total is 1,234 apples.")
    '1234'
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_boxed(text: str) -> str | None:
    """Contents of the last ``\\boxed{...}`` (nested braces allowed), or None."""
    start = text.rfind("\\boxed")
    while start != -1:
        i = start + len("\\boxed")
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth, j = 0, i
            while j < len(text):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    return text[i + 1 : j].strip()
                j += 1
        start = text.rfind("\\boxed", 0, start)
    return None


def extract_answer(text: str) -> str | None:
    """The final answer: the last ``\\boxed{}``, else a GSM8K ``#### x``, else the last number."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    if "####" in text:
        return text.rsplit("####", 1)[1].strip().replace(",", "") or None
    nums = _NUMBER.findall(text)
    return nums[-1].replace(",", "") if nums else None


def grade_numeric(predicted: str | None, reference: str) -> bool:
    """Numbers compared as numbers (``"17"`` == ``"17.0"``); anything else as trimmed strings."""
    if predicted is None:
        return False
    p, r = predicted.strip().replace(",", ""), reference.strip().replace(",", "")
    try:
        return abs(float(p) - float(r)) < 1e-9
    except ValueError:
        return p == r
