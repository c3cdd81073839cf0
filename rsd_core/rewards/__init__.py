"""Reward models behind one contract, and ``load_reward_model`` to pick the family of a checkpoint.

Example:
    >>> rm = load_reward_model(lambda q, prev, step: 0.9)
    >>> type(rm).__name__
    'FunctionReward'
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rsd_core.errors import ModelLoadError, UnknownRewardModelError
from rsd_core.rewards.arithmetic import arithmetic_reward
from rsd_core.rewards.base import RewardModel, question_of
from rsd_core.rewards.chat_judge import ChatPRM, LLMJudge
from rsd_core.rewards.function import FunctionReward
from rsd_core.rewards.likelihood import LikelihoodPRM
from rsd_core.rewards.math_shepherd import MathShepherdPRM
from rsd_core.rewards.outcome import OutcomeRM
from rsd_core.rewards.step_tag import StepTagPRM
from rsd_core.rewards.value_head import ValueHeadPRM

FAMILIES: dict[str, Callable[..., RewardModel]] = {
    "step_tag": StepTagPRM.from_pretrained,  # Qwen2.5-Math-PRM, the toy PRM, *ForTokenClassification
    "value_head": ValueHeadPRM.from_pretrained,  # Skywork-o1-Open-PRM
    "math_shepherd": MathShepherdPRM.from_pretrained,  # math-shepherd-mistral-7b-prm
    "chat_prm": ChatPRM.from_pretrained,  # RLHFlow Llama3.1-8B-PRM-*
    "llm_judge": LLMJudge.from_pretrained,  # any chat model
    "likelihood": LikelihoodPRM.from_pretrained,  # any causal LM trained on solutions (the toy PRM)
    "orm": OutcomeRM.from_pretrained,  # outcome reward models (*ForSequenceClassification)
}
BUILTIN_FUNCTIONS = {"arithmetic": arithmetic_reward}

__all__ = ["FAMILIES", "ChatPRM", "FunctionReward", "LLMJudge", "LikelihoodPRM", "MathShepherdPRM", "OutcomeRM", "RewardModel", "StepTagPRM",
           "ValueHeadPRM", "arithmetic_reward", "detect_reward_type", "load_reward_model", "question_of"]


def _read_config(name_or_path: str) -> dict[str, Any]:
    local = Path(name_or_path) / "config.json"
    if local.is_file():
        return json.loads(local.read_text())
    if Path(name_or_path).exists():
        raise ModelLoadError(f"{name_or_path!r} has no config.json: it is not a transformers checkpoint")
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(name_or_path).to_dict()
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not read the config of reward model {name_or_path!r}: {e}") from e


def _weight_names(name_or_path: str) -> list[str]:
    local = Path(name_or_path)
    index = local / "model.safetensors.index.json"
    if index.is_file():
        return list(json.loads(index.read_text())["weight_map"])
    names: list[str] = []
    for f in local.glob("*.safetensors"):
        from safetensors import safe_open

        with safe_open(str(f), framework="pt") as st:
            names += list(st.keys())
    return names


def _vocab_has(name_or_path: str, token: str) -> bool:
    f = Path(name_or_path) / "tokenizer.json"
    if not f.is_file():
        return False
    text = f.read_text(encoding="utf-8")
    return f'"{token}"' in text or json.dumps(token) in text


def detect_reward_type(name_or_path: str) -> str:
    """A checkpoint's family, from what it declares (``rsd_reward.type``), its architectures, its weight
    names and its special tokens."""
    cfg = _read_config(name_or_path)
    declared = (cfg.get("rsd_reward") or {}).get("type")
    if declared:
        return str(declared)
    archs = cfg.get("architectures") or []
    if any(a.endswith("ForTokenClassification") or a.endswith("ForProcessRewardModel") for a in archs):
        return "step_tag"
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "orm"
    if any(n.startswith("v_head.") for n in _weight_names(name_or_path)):
        return "value_head"
    if any(a.endswith("ForCausalLM") for a in archs) and _vocab_has(name_or_path, "ки"):
        return "math_shepherd"
    raise UnknownRewardModelError(
        f"cannot tell which reward-model family {name_or_path!r} belongs to (architectures={archs}). "
        f"Supported: {', '.join(sorted(FAMILIES))}. Pass reward_type=... to choose one (chat_prm and llm_judge "
        "are never guessed), reward='arithmetic', or a Python function (question, previous_steps, step) -> float."
    )


def load_reward_model(reward: str | RewardModel | Callable[..., float], *, reward_type: str | None = None,
                      **kwargs: Any) -> RewardModel:
    """A ``RewardModel`` from a checkpoint id/path, a callable, or one already built."""
    if isinstance(reward, RewardModel):
        return reward
    if callable(reward):
        return FunctionReward(reward)
    if reward in BUILTIN_FUNCTIONS:
        return FunctionReward(BUILTIN_FUNCTIONS[reward], name=reward)
    if not isinstance(reward, str):
        raise TypeError(f"reward must be a model id/path, a RewardModel or a callable, got {type(reward).__name__}")
    kind = reward_type or detect_reward_type(reward)
    if kind not in FAMILIES:
        raise UnknownRewardModelError(f"unknown reward_type {kind!r}; supported: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[kind](reward, **kwargs)
