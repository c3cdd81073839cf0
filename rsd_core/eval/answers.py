"""Answer extraction and grading.

Extraction takes the last ``\\boxed{}`` (braces nested to any depth), else a GSM8K ``#### x`` line,
else the last number. Grading compares the extracted answer with the reference using
`math-verify <https://github.com/huggingface/Math-Verify>`_ (symbolic equivalence: ``\\frac12`` ==
``0.5``, ``\\left(3, \\frac{\\pi}{2}\\right)`` == ``(3, \\pi/2)``, units and ``\\text{}`` dropped).

Example:
    >>> extract_boxed(r"so \\boxed{\\frac{1}{2}} and finally \\boxed{42}.")
    '42'
    >>> extract_answer("The total is 1,234 apples.")
    '1234'
    >>> grade(r"\\dfrac{1}{2}", "0.5")
    True
"""

from __future__ import annotations

import re
import threading

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_NUMBER_WITH_WORDS = re.compile(r"^\s*(-?\$?\d[\d,]*(?:\.\d+)?)\s*[A-Za-z][A-Za-z .]*$")


def extract_boxed(text: str) -> str | None:
    """Contents of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with nested braces, or None."""
    best = None
    for cmd in ("\\boxed", "\\fbox"):
        start = text.rfind(cmd)
        while start != -1:
            inner = _braced(text, start + len(cmd))
            if inner is not None:
                if best is None or start > best[0]:
                    best = (start, inner)
                break
            start = text.rfind(cmd, 0, start)
    return best[1].strip() if best else None


def _braced(text: str, i: int) -> str | None:
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{" and (j == 0 or text[j - 1] != "\\"):
            depth += 1
        elif text[j] == "}" and (j == 0 or text[j - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None  # unbalanced: the answer was cut off


def extract_gsm8k(text: str) -> str | None:
    """What follows the last ``####`` (GSM8K's reference format), commas dropped."""
    if "####" not in text:
        return None
    tail = text.rsplit("####", 1)[1].strip().splitlines()
    return tail[0].strip().replace(",", "") or None if tail else None


def extract_answer(text: str) -> str | None:
    """The final answer: the last ``\\boxed{}``, else a GSM8K ``#### x``, else the last number."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    hashed = extract_gsm8k(text)
    if hashed is not None:
        return hashed
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


def _as_latex(answer: str) -> str:
    m = _NUMBER_WITH_WORDS.match(answer)  # "18 dollars" -> "18" (in \text{} math-verify drops units itself)
    body = m.group(1) if m else answer
    return body if body.startswith("$") and body.endswith("$") and len(body) > 1 else f"${body}$"


def grade(predicted: str | None, reference: str, timeout_s: int = 5) -> bool:
    """True when ``predicted`` is mathematically equivalent to ``reference`` (math-verify).

    Both are extracted answers (not whole solutions). A parse that math-verify cannot make falls
    back to comparing numbers, then trimmed strings. ``timeout_s`` bounds each parse and comparison
    in the main thread; math-verify's timer needs signals, so other threads run without one.
    """
    if predicted is None or not predicted.strip():
        return False
    if grade_numeric(predicted, reference):
        return True
    from math_verify import parse, verify

    t = timeout_s if threading.current_thread() is threading.main_thread() else None
    gold = parse(_as_latex(reference), parsing_timeout=t)
    pred = parse(_as_latex(predicted), parsing_timeout=t)
    if not gold or not pred:
        return predicted.strip() == reference.strip()
    return bool(verify(gold, pred, timeout_seconds=t))
