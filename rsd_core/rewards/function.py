"""Plain Python rewards: any ``fn(question, previous_steps, step) -> float`` in [0, 1].

Example:
    >>> r = FunctionReward(lambda q, prev, step: 1.0 if "=" in step else 0.0)
    >>> r.start(0, [{"role": "user", "content": "1+1?"}])
    >>> r.score([0], ["1 + 1 = 2"])
    [1.0]
"""

from __future__ import annotations

from collections.abc import Callable

from rsd_core.rewards.base import Conversation, RewardModel, checked_reward, question_of

RewardFn = Callable[[str, list[str], str], float]


class FunctionReward(RewardModel):
    def __init__(self, fn: RewardFn, name: str | None = None):
        self.fn = fn
        self.name = str(name or getattr(fn, "__name__", "function reward"))
        self._q: dict[int, str] = {}
        self._steps: dict[int, list[str]] = {}

    def start(self, seq: int, conversation: Conversation) -> None:
        self._q[seq] = question_of(conversation)
        self._steps[seq] = []

    def score(self, seqs: list[int], steps: list[str]) -> list[float]:
        # Every reward first, then the steps: a function that fails on one leaves no sequence half-scored.
        out = [checked_reward(self.fn(self._q[s], list(self._steps[s]), step), f"reward function {self.name}")
               for s, step in zip(seqs, steps)]
        for s, step in zip(seqs, steps):
            self._steps[s].append(step)
        return out

    def rollback(self, seqs: list[int]) -> None:
        for s in seqs:
            self._steps[s].pop()

    def release(self, seqs: list[int]) -> None:
        for s in seqs:
            self._q.pop(s, None)
            self._steps.pop(s, None)
