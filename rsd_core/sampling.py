"""Picking the next token, on device, for a whole batch (no host sync).

Sampling reads one random stream per sequence (``Draws``), so a seeded sequence writes the same text
whether it runs alone or among others: its draws depend on its own key and on how many draws it made
before, never on the batch.

Example:
    >>> import torch
    >>> sample_next(torch.tensor([[0.1, 2.0, 0.3]]), SamplingConfig(), None).tolist()
    [1]
    >>> d = Draws.of([7, 7], [0, 0], torch.device("cpu"))
    >>> bool((d.uniform(5)[0] == d.uniform(5)[1]).all())   # same key, same count: same numbers
    True
"""

from __future__ import annotations

import hashlib

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


def stream_key(*parts: object) -> int:
    """A stream's key (63 bits) from what identifies it: the run's seed, the model, the prompt..."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


# splitmix64's constants as signed 64-bit integers (torch has no uint64 arithmetic)
_GOLDEN, _MUL1, _MUL2 = -7046029254386353131, -4658895280553007687, -7723592293110705685


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer on int64 (products wrap; shifts masked to act as logical shifts)."""
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * _MUL1
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * _MUL2
    return x ^ ((x >> 31) & ((1 << 33) - 1))


class Draws:
    """One random stream per row: row ``b``'s next draw reads uniforms that depend only on ``keys[b]``
    and ``counts[b]`` (the draws the row made before), from a counter-based hash computed on device.

    ``advance`` counts a draw for the rows that made one; the caller keeps the counts with each sequence.

    Example:
        >>> d = Draws.of([1, 2], [0, 5], torch.device("cpu"))
        >>> d.uniform(3).shape, d.advance(torch.tensor([True, False])), d.counts.tolist()
        (torch.Size([2, 3]), None, [1, 5])
    """

    def __init__(self, keys: torch.Tensor, counts: torch.Tensor):
        self.keys, self.counts = keys, counts

    @classmethod
    def of(cls, keys: list[int], counts: list[int], device: torch.device) -> Draws:
        return cls(torch.tensor(keys, dtype=torch.long, device=device),
                   torch.tensor(counts, dtype=torch.long, device=device))

    def uniform(self, n: int) -> torch.Tensor:
        """[rows, n] numbers in (0, 1) for each row's next draw (24 bits each)."""
        base = _mix(self.keys * _GOLDEN + self.counts)
        cols = torch.arange(1, n + 1, dtype=torch.long, device=self.keys.device) * _GOLDEN
        x = _mix(_mix(base[:, None] + cols))
        return (((x >> 40) & 0xFFFFFF).float() + 0.5) * (1.0 / (1 << 24))

    def advance(self, drew: torch.Tensor | None = None) -> None:
        self.counts += 1 if drew is None else drew.long()

    def generator(self, row: int) -> torch.Generator:
        """A torch generator for the row's next draw (for draws made on the host, one row at a time)."""
        seed = int(_mix(self.keys[row : row + 1] * _GOLDEN + self.counts[row : row + 1] + _MUL1)[0])
        g = torch.Generator(device=self.keys.device)
        g.manual_seed(seed & ((1 << 63) - 1))
        return g


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, draws: Draws | None,
                probs_out: list[torch.Tensor] | None = None) -> torch.Tensor:
    """One token per row; greedy is argmax, the rest stays on device (no host sync). ``draws``: each
    row's random stream (None: torch's global one). With ``probs_out``, the distribution each row drew
    from is appended to it ([B, V]; sampling only)."""
    if cfg.greedy:
        return logits.argmax(-1)
    probs = filtered_probs(logits, cfg)
    if probs_out is not None:
        probs_out.append(probs)
    if draws is None:
        return torch.multinomial(probs, 1).squeeze(-1)
    # The exponential race: argmax p_i / E_i with E_i ~ Exp(1) picks token i with probability p_i.
    return (probs / -torch.log(draws.uniform(probs.shape[-1]))).argmax(-1)
