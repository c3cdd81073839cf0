"""User-facing configuration of the RSD decoder (pydantic: bad values fail early, with the field named).

Example:
    >>> cfg = RSDConfig(threshold=0.8, max_new_tokens=256)
    >>> cfg.weighting
    'binary'
    >>> RSDConfig(threshold=1.5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for RSDConfig
    threshold
      Input should be less than or equal to 1...
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

WeightingName = Literal["binary", "constant", "clip", "sigmoid", "logistic"]


class SamplingConfig(BaseModel):
    """How one model picks tokens. ``temperature=0`` is greedy (deterministic)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.0, ge=0.0, le=10.0, description="0 = greedy; >0 samples.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (1 = off).")
    top_k: int = Field(0, ge=0, description="Keep the k most likely tokens (0 = off).")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class RSDConfig(BaseModel):
    """Everything that shapes one RSD run.

    Attributes:
        threshold: δ. With the default binary weighting a draft step is kept iff its reward >= δ;
            δ = 0 keeps every draft step (draft only), δ = 1 sends every step to the target.
        weighting: ω, the acceptance weight of a reward (Liao et al. 2025, section 3):
            ``binary`` 1[r >= δ]; ``constant`` p; ``clip`` min(1, max(0, r)); ``sigmoid`` r / (1 + r);
            ``logistic`` 1 / (1 + exp(-α (r - δ))). All but binary accept stochastically.
        constant_p: p for ``constant``.
        alpha: α for ``logistic``.
        step_delimiters: strings that end a reasoning step (the step keeps its delimiter).
        max_new_tokens / max_steps / max_step_tokens: budgets per sequence.
        draft_sampling / target_sampling: per-model sampling; greedy by default.
        seed: makes sampling and stochastic acceptance reproducible.
        speculative_rewrite: when a draft step is rejected, the target first verifies that step's tokens
            in one forward and keeps the longest prefix its own decoding would write (greedy: exact
            match; sampling: the speculative-sampling rule), then writes on. Lossless: the target's
            text is unchanged, only fewer target forwards run. Needs one tokenizer for draft and target.
        scheduler: ``auto`` runs RSD without lockstep rounds where the draft can (the native engine, no
            grammar); ``lockstep`` always runs rounds (every sequence drafts a step, then the PRM scores
            them all, then the target rewrites the rejected ones), as the reference implementation does.
        score_batch: without lockstep rounds, a sequence whose draft step ended waits out of the draft's
            batch until this many ended steps wait (or no sequence is left writing); the PRM scores them
            in one call. 1 scores the steps that end at each token at once.
        target_batch / target_wait_s: without lockstep rounds (a draft on the native engine), rejected
            steps queue for the target while the other sequences go on drafting; the target runs its
            queue once this many steps wait, or once the oldest has waited this long (target_batch=None
            with no wait: only when no sequence is left drafting, so the target always runs one full
            batch). The default, 1, runs it as soon as a step is rejected: the draft's batch stays
            fullest (measured on CPU, docs/benchmarks.md).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    threshold: float = Field(0.7, ge=0.0, le=1.0)
    weighting: WeightingName = "binary"
    constant_p: float = Field(0.5, ge=0.0, le=1.0)
    alpha: float = Field(10.0, gt=0.0, le=1e4)
    step_delimiters: list[str] = Field(default_factory=lambda: ["\n\n"], min_length=1)
    max_new_tokens: int = Field(1024, ge=1, le=1_000_000)
    max_steps: int = Field(64, ge=1, le=100_000)
    max_step_tokens: int = Field(256, ge=1, le=100_000)
    draft_sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    target_sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    seed: int | None = Field(None, ge=0, le=2**62)  # seed + offsets must fit torch's 64-bit generator
    speculative_rewrite: bool = True
    scheduler: Literal["auto", "lockstep"] = "auto"
    score_batch: int = Field(1, ge=1, le=100_000)
    target_batch: int | None = Field(1, ge=1, le=100_000)
    target_wait_s: float | None = Field(None, gt=0.0, le=3600.0)

    @field_validator("step_delimiters")
    @classmethod
    def _non_empty_delimiters(cls, v: list[str]) -> list[str]:
        if any(not d for d in v):
            raise ValueError(f"step delimiters must be non-empty strings, got {v!r}")
        return v
