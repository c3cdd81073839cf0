"""Captured CUDA graphs: a body of device work recorded once and replayed, one launch for all its kernels.

A body may only update preallocated tensors in place (its inputs are whatever those tensors hold at
replay) and must not talk to the host. Off CUDA, or when switched off, the body simply runs.

Example:
    >>> import torch
    >>> x = torch.zeros(2)
    >>> g = Graphs(enabled=False)
    >>> g.run("add", lambda: x.add_(1), state=[x]).tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch


class Graphs:
    """Bodies captured on first use under a key, then replayed (the key names what the capture fixed:
    shapes, tensors that may be reallocated). All graphs share one memory pool."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._graphs: dict[Hashable, tuple[Any, Any]] = {}
        self._pool: Any = None

    def run(self, key: Hashable, body: Callable[[], Any], state: Sequence[torch.Tensor]) -> Any:
        """Replay ``body``'s graph (capturing it first if new); ``state``: every tensor the body updates
        that must not move while it is warmed up and captured (restored afterwards)."""
        if not self.enabled:
            return body()
        if key not in self._graphs:
            self._graphs[key] = self._capture(body, state)
        graph, out = self._graphs[key]
        graph.replay()
        return out

    def forget(self, keep: Callable[[Hashable], bool]) -> None:
        """Drop the graphs whose key fails ``keep`` (they read tensors that were reallocated)."""
        self._graphs = {k: v for k, v in self._graphs.items() if keep(k)}

    def __len__(self) -> int:
        return len(self._graphs)

    def _capture(self, body: Callable[[], Any], state: Sequence[torch.Tensor]) -> tuple[Any, Any]:
        saved = [t.clone() for t in state]

        def restore() -> None:
            for t, v in zip(state, saved):
                t.copy_(v)

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # lazily initialised kernels and workspaces, outside the graph
                body()
                restore()
        torch.cuda.current_stream().wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = body()
        restore()
        return graph, out
