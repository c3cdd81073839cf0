"""Plain Python rewards: any ``fn(question, previous_steps, step) -> float`` in [0, 1].

Example:
    >>> r = FunctionReward(lambda q, prev, step: 1.0 if "=" in step else 0.0)
    >>> r.start(0, [{"role": "user", "content": "1+1?"}])
    >>> r.score([0], ["1 + 1 = 2"])
    [1.0]
"""

from __future__ import annotations

from collections.abc import Callable

from rsd_core.errors import RewardValueError
from rsd_core.rewards.base import Conversation, RewardModel, question_of

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
        out = []
        for s, step in zip(seqs, steps):
            r = float(self.fn(self._q[s], list(self._steps[s]), step))
            if not 0.0 <= r <= 1.0:
                raise RewardValueError(f"reward function {self.name} returned {r}, outside [0, 1]")
            self._steps[s].append(step)
            out.append(r)
        return out

    def rollback(self, seqs: list[int]) -> None:
        for s in seqs:
            self._steps[s].pop()

    def release(self, seqs: list[int]) -> None:
        for s in seqs:
            self._q.pop(s, None)
            self._steps.pop(s, None)
