"""Reward models behind one contract, and ``load_reward_model`` to pick the family of a checkpoint.

Example:
    >>> rm = load_reward_model(lambda q, prev, step: 0.9)
    >>> type(rm).__name__
    'FunctionReward'
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from rsd_core.errors import UnknownRewardModelError
from rsd_core.rewards.arithmetic import arithmetic_reward
from rsd_core.rewards.base import RewardModel, question_of
from rsd_core.rewards.chat_judge import ChatPRM, ChatPRMFormat, JudgeFormat, LLMJudge
from rsd_core.rewards.detect import detect_reward_type
from rsd_core.rewards.format import PRMFormat
from rsd_core.rewards.function import FunctionReward
from rsd_core.rewards.likelihood import LikelihoodFormat, LikelihoodPRM
from rsd_core.rewards.math_shepherd import MathShepherdFormat, MathShepherdPRM
from rsd_core.rewards.outcome import OutcomeFormat, OutcomeRM
from rsd_core.rewards.step_tag import StepTagFormat, StepTagPRM
from rsd_core.rewards.value_head import ValueHeadFormat, ValueHeadPRM
from rsd_core.runtime.checkpoints import metadata_dir

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

__all__ = ["FAMILIES", "ChatPRM", "ChatPRMFormat", "FunctionReward", "JudgeFormat", "LLMJudge", "LikelihoodFormat",
           "LikelihoodPRM", "MathShepherdFormat", "MathShepherdPRM", "OutcomeFormat", "OutcomeRM", "PRMFormat",
           "RewardModel", "StepTagFormat", "StepTagPRM", "ValueHeadFormat", "ValueHeadPRM", "arithmetic_reward",
           "detect_reward_type", "load_reward_model", "question_of"]


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
    if reward_type is not None:
        metadata_dir(reward, kwargs.get("revision"))  # a missing folder or unknown id fails here, by name
    kind = reward_type or detect_reward_type(reward, kwargs.get("revision"))
    if kind not in FAMILIES:
        raise UnknownRewardModelError(f"unknown reward_type {kind!r}; supported: {', '.join(sorted(FAMILIES))}")
    try:
        return FAMILIES[kind](reward, **kwargs)
    except TypeError as e:  # a format option the family does not have: say which, in the caller's terms
        bad = re.search(r"unexpected keyword argument '([^']+)'", str(e))
        if bad is None:
            raise
        raise ValueError(f"the {kind!r} reward family ({reward}) has no option {bad.group(1)!r}; its options "
                         f"are its format's keywords (docs/reward-models.md)") from None
