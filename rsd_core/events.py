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

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

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


@dataclass
class ModelUsage:
    """Work done by one model for one sequence."""

    prefill_tokens: int = 0  # tokens read that the model did not write itself (prompt, handed-over steps)
    decode_tokens: int = 0  # tokens the model generated, kept or rolled back
    flops: float = 0.0  # the full count: every token read or written, prompt and attention included
    # The paper's count: 2·N per token the model generated (for a PRM: per step token it scored);
    # no prompt, no attention term.
    paper_flops: float = 0.0
    calls: int = 0  # batched forward passes this sequence took part in

    def add(self, other: ModelUsage) -> None:
        self.prefill_tokens += other.prefill_tokens
        self.decode_tokens += other.decode_tokens
        self.flops += other.flops
        self.paper_flops += other.paper_flops
        self.calls += other.calls

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GenerationStats:
    """Counts for one sequence (or, summed with ``merge``, for many)."""

    draft_steps: int = 0  # draft steps proposed and judged
    accepted_draft_steps: int = 0
    target_steps: int = 0
    target_invocations: int = 0
    # The target's rewrites of rejected steps: how many, their forward passes, and the tokens each kept
    # from the rejected step it was given to verify (``RSDConfig.speculative_rewrite``).
    rewritten_steps: int = 0
    rewrite_forwards: int = 0
    speculated_tokens: int = 0
    draft: ModelUsage = field(default_factory=ModelUsage)
    target: ModelUsage = field(default_factory=ModelUsage)
    reward: ModelUsage = field(default_factory=ModelUsage)
    wall_time_s: float = 0.0

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted draft steps / judged draft steps (None when the draft never proposed)."""
        return self.accepted_draft_steps / self.draft_steps if self.draft_steps else None

    @property
    def forwards_per_rewrite(self) -> float | None:
        """Target forward passes per rewritten step (None without rewrites or where not counted)."""
        return self.rewrite_forwards / self.rewritten_steps if self.rewritten_steps and self.rewrite_forwards else None

    @property
    def total_flops(self) -> float:
        return self.draft.flops + self.target.flops + self.reward.flops

    @property
    def total_paper_flops(self) -> float:
        return self.draft.paper_flops + self.target.paper_flops + self.reward.paper_flops

    def merge(self, other: GenerationStats) -> None:
        self.draft_steps += other.draft_steps
        self.accepted_draft_steps += other.accepted_draft_steps
        self.target_steps += other.target_steps
        self.target_invocations += other.target_invocations
        self.rewritten_steps += other.rewritten_steps
        self.rewrite_forwards += other.rewrite_forwards
        self.speculated_tokens += other.speculated_tokens
        self.draft.add(other.draft)
        self.target.add(other.target)
        self.reward.add(other.reward)
        self.wall_time_s = max(self.wall_time_s, other.wall_time_s)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["acceptance_rate"] = self.acceptance_rate
        d["forwards_per_rewrite"] = self.forwards_per_rewrite
        d["total_flops"] = self.total_flops
        d["total_paper_flops"] = self.total_paper_flops
        return d


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


Callback = RSDCallback | Callable[[Any], None]


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
