"""The reward-model contract: the reward of the newest step of each sequence, in [0, 1].

Every reward model keeps, per sequence, the prefix it has already scored (its own cache), so a new
step costs a forward over that step alone. ``score`` appends the steps it scores; ``rollback``
takes the newest one back (a rejected draft step).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from rsd_core.events import ModelUsage

Conversation = list[dict[str, Any]]


class RewardModel(ABC):
    name: str = "reward"

    @abstractmethod
    def start(self, seq: int, conversation: Conversation) -> None:
        """Begin a sequence: the conversation whose (last) user turn the steps answer."""

    @abstractmethod
    def score(self, seqs: list[int], steps: list[str]) -> list[float]:
        """Append one step to each sequence and return its reward (a float in [0, 1])."""

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
