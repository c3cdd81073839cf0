"""What a run counts: FLOPs per forward pass from a model's shape, the work each model did for a
sequence (``ModelUsage``) and the per-sequence counts (``GenerationStats``).

A forward over ``n`` new tokens after ``c`` cached ones costs about ``2·N·n`` for the weights (N =
parameters used per token: everything but the input embedding lookup, the output projection
included) plus ``4·L·d_attn·(n·c + n(n+1)/2)`` for attention scores and the weighted sum.

Example:
    >>> f = FlopCounter(n_params=1_000, n_layers=2, attn_dim=8)
    >>> f.forward(1, 0)
    2064.0
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class FlopCounter:
    n_params: int
    n_layers: int
    attn_dim: int

    @classmethod
    def for_model(cls, model: Any) -> FlopCounter:
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        params = {id(p): p.numel() for p in model.parameters()}
        total = sum(params.values())
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        n = total
        if emb is not None:
            n -= emb.weight.numel()
            if out is not None and out.weight is emb.weight:
                n += out.weight.numel()  # tied: the lookup is free, the output projection is not
        heads = getattr(cfg, "num_attention_heads", 1)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        return cls(n_params=n, n_layers=cfg.num_hidden_layers, attn_dim=heads * head_dim)

    def weights(self, n_tokens: int) -> float:
        """The paper's count: 2·N per token, no attention term."""
        return float(2 * self.n_params * max(0, n_tokens))

    def forward(self, n_new: int, n_cached: int) -> float:
        if n_new <= 0:
            return 0.0
        attn_pairs = n_new * n_cached + n_new * (n_new + 1) / 2
        return float(2 * self.n_params * n_new + 4 * self.n_layers * self.attn_dim * attn_pairs)


# --------------------------------------------------------------------------- what a run counts


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
        _add_fields(self, other)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _add_fields(into: Any, other: Any) -> None:
    """Add each field of ``other`` to ``into``'s, a nested usage record by its own ``add``."""
    for f in fields(into):
        mine = getattr(into, f.name)
        if isinstance(mine, ModelUsage):
            mine.add(getattr(other, f.name))
        else:
            setattr(into, f.name, mine + getattr(other, f.name))


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
        """Add ``other``'s counts to these; the wall time is the longer one (the runs overlapped)."""
        wall = max(self.wall_time_s, other.wall_time_s)
        _add_fields(self, other)
        self.wall_time_s = wall

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["acceptance_rate"] = self.acceptance_rate
        d["forwards_per_rewrite"] = self.forwards_per_rewrite
        d["total_flops"] = self.total_flops
        d["total_paper_flops"] = self.total_paper_flops
        return d
