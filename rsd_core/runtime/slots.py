"""KV slots with a length per slot: the cache of the native engine (``runtime/native_engine.py``).

Each sequence owns one slot: per layer, K and V of shape ``[kv_heads, max_len, head_dim]``, and a length
(how many leading columns hold its tokens). A forward over new tokens writes them at each slot's own
length; rolling a step back is ``length -= n``; nothing is ever compacted, masked out or shared. One more
column past ``capacity`` is never read: a batch row with nothing to write (a slot idle in a static-shape
decode) writes there.

Example:
    >>> import torch
    >>> c = SlotCache(n_layers=1, kv_heads=1, head_dim=2, max_len=8, dtype=torch.float32, device=torch.device("cpu"))
    >>> s = c.acquire()
    >>> c.lengths[s] = 5; c.shorten(s, 2); c.lengths[s]
    3
"""

from __future__ import annotations

import torch


class SlotCache:
    """Preallocated K/V for ``slots`` sequences (grown by doubling when more are in flight)."""

    def __init__(self, n_layers: int, kv_heads: int, head_dim: int, max_len: int, dtype: torch.dtype,
                 device: torch.device, slots: int = 1):
        self.n_layers, self.kv_heads, self.head_dim, self.max_len = n_layers, kv_heads, head_dim, max_len
        self.dtype, self.device = dtype, device
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.lengths: list[int] = []  # host copy: the decoder's bookkeeping reads it without a device sync
        self.capacity = 0  # columns allocated per slot (one more, the scratch column, is never read)
        self.generation = 0  # bumped whenever the tensors are reallocated (captured graphs read the old ones)
        self._free: list[int] = []
        self._grow(slots, min(max_len, 256))

    def _grow(self, slots: int, columns: int) -> None:
        old, old_cols = len(self.lengths), self.capacity
        shape = (slots, self.kv_heads, columns + 1, self.head_dim)
        keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.n_layers)]
        values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.n_layers)]
        for new, cur in zip(keys + values, self.keys + self.values):
            new[:old, :, :old_cols] = cur[:, :, :old_cols]
        self.keys, self.values, self.capacity = keys, values, columns
        self.generation += 1
        self.lengths += [0] * (slots - old)
        self._free += list(range(old, slots))

    def reserve(self, columns: int) -> None:
        """Make every slot hold at least ``columns`` columns (at most ``max_len``)."""
        if columns > self.capacity:
            self._grow(self.slots, min(self.max_len, max(columns, 2 * self.capacity)))

    @property
    def slots(self) -> int:
        return len(self.lengths)

    def acquire(self) -> int:
        if not self._free:
            self._grow(2 * self.slots, self.capacity)
        slot = self._free.pop(0)
        self.lengths[slot] = 0
        return slot

    def free(self, slot: int) -> None:
        self.lengths[slot] = 0
        self._free.append(slot)

    def shorten(self, slot: int, n: int) -> None:
        """Forget the newest ``n`` cached tokens of a slot: its data stays, unread, until overwritten."""
        if n > self.lengths[slot]:
            raise ValueError(f"cannot roll back {n} cached tokens of a slot holding {self.lengths[slot]}")
        self.lengths[slot] -= n

    def check_room(self, slot: int, n: int) -> None:
        """Room for ``n`` more tokens in ``slot`` (allocating columns as needed)."""
        if self.lengths[slot] + n > self.max_len:
            raise RuntimeError(f"a sequence needs {self.lengths[slot] + n} cache columns but the native engine's slots "
                               f"hold {self.max_len}; raise max_len")
        self.reserve(self.lengths[slot] + n)
