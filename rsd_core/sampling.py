"""Picking the next token, on device, for a whole batch (no host sync).

Example:
    >>> import torch
    >>> sample_next(torch.tensor([[0.1, 2.0, 0.3]]), SamplingConfig(), None).tolist()
    [1]
"""

from __future__ import annotations

import torch

from rsd_core.config import SamplingConfig


def filtered_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """The distribution a sampling config draws from: temperature, then top-k, then top-p (fp32)."""
    logits = logits.float() / cfg.temperature
    if cfg.top_k:
        kth = torch.topk(logits, min(cfg.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(-1) - probs > cfg.top_p  # keep the smallest prefix with mass >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.softmax(logits, dim=-1)


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None,
                probs_out: list[torch.Tensor] | None = None) -> torch.Tensor:
    """One token per row; greedy is argmax, the rest stays on device (no host sync). With ``probs_out``,
    the distribution each row drew from is appended to it ([B, V]; sampling only)."""
    if cfg.greedy:
        return logits.argmax(-1)
    probs = filtered_probs(logits, cfg)
    if probs_out is not None:
        probs_out.append(probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
