"""How a question is put to each model family for evaluation.

- ``qwen-math``: Qwen2.5-Math's chain-of-thought system prompt, answer in ``\\boxed{}`` (the default
  for Qwen2 models, as in the Qwen2.5-Math evaluation harness and the RSD paper);
- ``cot``: the same instruction after the question in the user turn, for chat templates that have
  no system role (Gemma, Mistral) or families that follow user-turn instructions better (Llama);
- ``plain``: the question alone (the toy trio, which was trained on bare questions).

``auto`` picks by the target model: the shipped toy trio -> plain, Qwen2 -> qwen-math, else cot.

Example:
    >>> build_messages("What is 2+3?", "qwen-math")[0]["role"]
    'system'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

PromptStyle = Literal["auto", "qwen-math", "cot", "plain"]
STYLES = ("auto", "qwen-math", "cot", "plain")
COT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def build_messages(question: str, style: str) -> list[dict[str, str]]:
    if style == "qwen-math":
        return [{"role": "system", "content": COT_INSTRUCTION}, {"role": "user", "content": question}]
    if style == "cot":
        return [{"role": "user", "content": f"{question}\n\n{COT_INSTRUCTION}"}]
    if style == "plain":
        return [{"role": "user", "content": question}]
    raise ValueError(f"unknown prompt style {style!r}: use one of {', '.join(STYLES)}")


def resolve_style(style: str, model: Any) -> str:
    """``auto`` -> the style for ``model`` (a transformers model, or None); other styles unchanged."""
    if style != "auto":
        build_messages("", style)  # validates the name
        return style
    from rsd_core.toy import WEIGHTS_DIR

    name = str(getattr(model, "name_or_path", "") or "")
    if name and Path(name).resolve().is_relative_to(WEIGHTS_DIR.resolve()):
        return "plain"
    model_type = getattr(getattr(model, "config", None), "model_type", "") or ""
    return "qwen-math" if model_type.startswith("qwen") else "cot"
