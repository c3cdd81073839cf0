"""One sequence's ledger, the same for every backend: its token ids, how many of them the model has
read (its cache holds them), and the work done for it.

The newest ids may be pending: handed over from another model, or the last token this model sampled
(``own_unfed``: not counted as prefill when it is read). Backends keep what their cache needs beside
it (a slot, KV tensors, cache columns).

Example:
    >>> s = Ledger([1, 2, 3], n_cached=3)
    >>> s.drop_tail(2), s.ids, s.n_cached
    (1, [1], 1)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rsd_core.accounting import ModelUsage


@dataclass
class Ledger:
    ids: list[int]
    n_cached: int = 0  # leading ids the model has read (and cached)
    own_unfed: int = 0  # trailing pending ids this model sampled itself (not prefill)
    usage: ModelUsage = field(default_factory=ModelUsage)
    stream: int = 0  # the key of the random stream this sequence samples from (``sampling.Draws``)
    draws: int = 0  # draws made from it so far (never rewound: a redrawn step gets fresh numbers)

    @property
    def pending(self) -> list[int]:
        return self.ids[self.n_cached:]

    def drop_tail(self, n_remove: int) -> int:
        """Forget the newest ``n_remove`` ids; the cached count follows. Returns how many ids remain.
        The backend drops its own cache entries past the new ``n_cached``."""
        if n_remove > len(self.ids):
            raise ValueError(f"cannot roll back {n_remove} tokens of a {len(self.ids)}-token sequence")
        keep = len(self.ids) - max(0, n_remove)
        unfed = len(self.ids) - self.n_cached
        self.own_unfed = max(0, min(self.own_unfed, unfed - max(0, n_remove)))
        del self.ids[keep:]
        self.n_cached = min(self.n_cached, keep)
        return keep


class Ledgers:
    """What every per-sequence cache (``CachedModel``, ``NativeCachedModel``) offers over its ledgers."""

    states: dict[int, Any]

    def truncate(self, seq: int, n_remove: int) -> None: ...

    def lengths(self, seqs: list[int]) -> list[int]:
        """Each sequence's length now: ``cut_to`` takes a failed call's appends back to it."""
        return [len(self.states[s].ids) for s in seqs]

    def cut_to(self, seqs: list[int], lengths: list[int]) -> None:
        for s, n in zip(seqs, lengths):
            if s in self.states:
                self.truncate(s, len(self.states[s].ids) - n)
