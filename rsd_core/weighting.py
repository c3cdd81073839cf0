"""ω: how a step's reward becomes the probability of keeping the draft's step.

Example:
    >>> w = Weighting.from_config(RSDConfig(threshold=0.7))
    >>> w.weight(0.9), w.weight(0.5)
    (1.0, 0.0)
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from rsd_core.config import RSDConfig, WeightingName


@dataclass(frozen=True)
class Weighting:
    kind: WeightingName = "binary"
    threshold: float = 0.7
    constant_p: float = 0.5
    alpha: float = 10.0

    @classmethod
    def from_config(cls, cfg: RSDConfig) -> Weighting:
        return cls(cfg.weighting, cfg.threshold, cfg.constant_p, cfg.alpha)

    def weight(self, reward: float) -> float:
        """ω(r) in [0, 1]."""
        r = reward
        if self.kind == "binary":
            # δ = 1 means "the target writes everything", even for a reward that rounds to 1.0.
            return 1.0 if (r >= self.threshold and self.threshold < 1.0) else 0.0
        if self.kind == "constant":
            return self.constant_p
        if self.kind == "clip":
            return min(1.0, max(0.0, r))
        if self.kind == "sigmoid":
            return r / (1.0 + r)
        return 1.0 / (1.0 + math.exp(-self.alpha * (r - self.threshold)))

    @property
    def always_accepts(self) -> bool:
        """True when no reward can reject a draft step (so the PRM need not run)."""
        return (self.kind == "binary" and self.threshold <= 0.0) or (self.kind == "constant" and self.constant_p >= 1.0)

    @property
    def always_rejects(self) -> bool:
        """True when no reward can accept a draft step (so the draft need not run)."""
        return (self.kind == "binary" and self.threshold >= 1.0) or (self.kind == "constant" and self.constant_p <= 0.0)

    def decide(self, rewards: list[float], rng: random.Random | list[random.Random]) -> tuple[list[float], list[bool]]:
        """ω for each reward and the accept decisions (u < ω with u ~ U[0, 1); exact for binary). ``rng``:
        one for all, or one per reward (each sequence's own, so its decisions do not depend on its batch)."""
        weights = [self.weight(r) for r in rewards]
        if self.kind == "binary":
            return weights, [w == 1.0 for w in weights]
        rngs = rng if isinstance(rng, list) else [rng] * len(weights)
        return weights, [g.random() < w for g, w in zip(rngs, weights)]
