"""What a run reports: one StepEvent per proposed step, one TargetInvocationEvent per target call,
and an RSDResult per prompt at the end. Callbacks see them as they happen.

A callback is either an object with any of ``on_step``, ``on_target_invocation``, ``on_end`` and
``on_error``, or a plain callable, which receives every event (``StepEvent``, ``TargetInvocationEvent``,
``RSDResult``) but not ``SequenceError``.

Example:
    >>> seen = []
    >>> dispatch([seen.append], "on_step", "event")
    >>> seen
    ['event']
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from rsd_core.accounting import GenerationStats, ModelUsage  # noqa: F401  (the records live beside the FLOP counter)

Source = Literal["draft", "target"]


@dataclass
class StepEvent:
    """One reasoning step as it was decided.

    A rejected draft step gives one event with ``accepted=False``, followed by the target's step for
    the same ``step_index`` (``source="target"``, always accepted).
    """

    sequence_index: int
    step_index: int
    text: str
    num_tokens: int
    source: Source
    reward: float | None
    weight: float | None  # ω(reward); None where no acceptance test was made
    accepted: bool
    is_final: bool = False
    latency_s: dict[str, float] = field(default_factory=dict)
    token_ids: list[int] = field(default_factory=list, repr=False)  # in the writing model's tokenizer

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TargetInvocationEvent:
    """The target was asked to write a step for one sequence."""

    sequence_index: int
    step_index: int
    reason: Literal["rejected", "target_only"]
    rejected_text: str | None
    rejected_reward: float | None
    catch_up_tokens: int  # accepted draft tokens the target read first (lazily, only now)
    num_tokens: int  # tokens the target wrote
    latency_s: float
    speculated_tokens: int = 0  # of those, taken from the rejected step after the target verified them

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FinishReason = Literal["eos", "stop", "max_new_tokens", "max_steps"]


@dataclass
class RSDResult:
    """The outcome for one prompt."""

    index: int
    text: str
    steps: list[StepEvent]  # every judged step in order, rejected draft steps included
    stats: GenerationStats
    finish_reason: FinishReason
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0  # tokens of the final text (target tokenizer)

    @property
    def accepted_steps(self) -> list[StepEvent]:
        return [s for s in self.steps if s.accepted]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "text": self.text,
            "finish_reason": self.finish_reason,
            "num_prompt_tokens": self.num_prompt_tokens,
            "num_output_tokens": self.num_output_tokens,
            "steps": [s.to_dict() for s in self.steps],
            "stats": self.stats.to_dict(),
        }


@dataclass
class SequenceError:
    """A failure that belonged to one sequence (its reward could not be computed or checked): that
    sequence ended without a result, the rest of its batch went on. ``generate`` raises ``error``
    once the others have finished."""

    sequence_index: int
    error: BaseException


@runtime_checkable
class RSDCallback(Protocol):
    """Any subset of these methods; each is called as the event happens."""

    def on_step(self, event: StepEvent) -> None: ...

    def on_target_invocation(self, event: TargetInvocationEvent) -> None: ...

    def on_end(self, result: RSDResult) -> None: ...

    def on_error(self, event: SequenceError) -> None: ...



def dispatch(callbacks: Iterable[Any], method: str, event: Any) -> None:
    """Send ``event`` to each callback: its ``method`` if it has one, else the callable itself."""
    for cb in callbacks:
        fn = getattr(cb, method, None)
        if fn is not None:
            fn(event)
        elif callable(cb) and method in _PLAIN and not any(hasattr(cb, m) for m in _METHODS):
            cb(event)


_PLAIN = ("on_step", "on_target_invocation", "on_end")  # what a plain callable receives
_METHODS = _PLAIN + ("on_error",)
