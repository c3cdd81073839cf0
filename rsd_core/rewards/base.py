"""The reward-model contract: the reward of the newest step of each sequence, in [0, 1].

Every reward model keeps, per sequence, the prefix it has already scored (its own cache), so a new
step costs a forward over that step alone. ``score`` appends the steps it scores; ``rollback``
takes the newest one back (a rejected draft step).
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from typing import Any

from rsd_core.accounting import ModelUsage
from rsd_core.errors import RewardValueError

Conversation = list[dict[str, Any]]


class RewardModel(ABC):
    name: str = "reward"

    @abstractmethod
    def start(self, seq: int, conversation: Conversation) -> None:
        """Begin a sequence: the conversation whose (last) user turn the steps answer."""

    @abstractmethod
    def score(self, seqs: list[int], steps: list[str]) -> list[float]:
        """Append one step to each sequence and return its reward (a float in [0, 1]).

        All or nothing: when it raises, no sequence keeps the step. The decoder then scores the batch
        one sequence at a time, so a failure that belongs to one sequence ends that sequence only."""

    @abstractmethod
    def rollback(self, seqs: list[int]) -> None:
        """Forget the newest step of each sequence."""

    @abstractmethod
    def release(self, seqs: list[int]) -> None: ...

    def usage(self, seq: int) -> ModelUsage:
        return ModelUsage()


def question_of(conversation: Conversation) -> str:
    """The text of the last user turn (what a PRM judges the steps against)."""
    for m in reversed(conversation):
        if m.get("role") == "user":
            c = m.get("content")
            return c if isinstance(c, str) else str(c)
    raise ValueError("the conversation has no user message for the reward model to judge against")


def checked_reward(value: Any, source: str) -> float:
    """``value`` as a reward, or ``RewardValueError`` saying what came back and what a reward is.

    A reward is a real number in [0, 1]: a float or int (a NumPy or one-element torch scalar too).
    Strings, bytes, booleans, ``Decimal``, ``None``, NaN, infinities and numbers outside [0, 1] are refused,
    whether they come from a function or from a ``RewardModel`` subclass, so a broken PRM never silently
    rejects (NaN) or passes (2.0) every step.

    Example:
        >>> checked_reward(0.25, "my PRM")
        0.25
    """
    if hasattr(value, "numel") and hasattr(value, "item") and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise RewardValueError(f"{source} returned {value!r} ({type(value).__name__}); a reward is a number in "
                               "[0, 1] (a float)")
    r = float(value)
    if math.isnan(r) or not 0.0 <= r <= 1.0:
        raise RewardValueError(f"{source} returned {r}, outside [0, 1]; a reward is a number in [0, 1]")
    return r


def checked_rewards(values: Any, n: int, source: str) -> list[float]:
    """One checked reward per scored sequence."""
    try:
        values = list(values)
    except TypeError:
        raise RewardValueError(f"{source} returned {values!r} from score(); it must return one reward per "
                               "sequence (a list of floats)") from None
    if len(values) != n:
        raise RewardValueError(f"{source} returned {len(values)} rewards for {n} sequences; score() returns one "
                               "reward per sequence")
    return [checked_reward(v, source) for v in values]
