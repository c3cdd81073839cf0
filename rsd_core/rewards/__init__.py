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
from rsd_core.rewards.base import RewardModel, question_of
from rsd_core.rewards.function import FunctionReward
from rsd_core.rewards.step_tag import StepTagPRM

FAMILIES: dict[str, Callable[..., RewardModel]] = {
    "step_tag": StepTagPRM.from_pretrained,
}

__all__ = ["FAMILIES", "FunctionReward", "RewardModel", "StepTagPRM", "detect_reward_type", "load_reward_model", "question_of"]


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


def detect_reward_type(name_or_path: str) -> str:
    """The family of a checkpoint, from what it declares: ``rsd_reward.type``, then its architectures."""
    cfg = _read_config(name_or_path)
    declared = (cfg.get("rsd_reward") or {}).get("type")
    if declared:
        return str(declared)
    archs = cfg.get("architectures") or []
    if any(a.endswith("ForTokenClassification") or a.endswith("ForProcessRewardModel") for a in archs):
        return "step_tag"
    raise UnknownRewardModelError(
        f"cannot tell which reward-model family {name_or_path!r} belongs to (architectures={archs}). "
        f"Supported: {', '.join(sorted(FAMILIES))}. Pass reward_type=... to choose one, "
        "or a Python function (question, previous_steps, step) -> float."
    )


def load_reward_model(reward: str | RewardModel | Callable[..., float], *, reward_type: str | None = None,
                      **kwargs: Any) -> RewardModel:
    """A ``RewardModel`` from a checkpoint id/path, a callable, or one already built."""
    if isinstance(reward, RewardModel):
        return reward
    if callable(reward):
        return FunctionReward(reward)
    if not isinstance(reward, str):
        raise TypeError(f"reward must be a model id/path, a RewardModel or a callable, got {type(reward).__name__}")
    kind = reward_type or detect_reward_type(reward)
    if kind not in FAMILIES:
        raise UnknownRewardModelError(f"unknown reward_type {kind!r}; supported: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[kind](reward, **kwargs)
