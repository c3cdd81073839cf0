"""FLOPs per forward pass, from a model's shape.

A forward over ``n`` new tokens after ``c`` cached ones costs about ``2·N·n`` for the weights (N =
parameters used per token: everything but the input embedding lookup, the output projection
included) plus ``4·L·d_attn·(n·c + n(n+1)/2)`` for attention scores and the weighted sum.

Example:
    >>> f = FlopCounter(n_params=1_000, n_layers=2, attn_dim=8)
    >>> f.forward(1, 0)
    2064.0
"""

from __future__ import annotations

from dataclasses import dataclass
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
