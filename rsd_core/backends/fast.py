"""The fast decode path: preallocated KV slots, one shared write column, and a CUDA-graphed decode step.

Plain HF decoding on a GPU is launch-bound (a 1.5B draft is barely faster than a 7B target; docs/benchmarks.md),
which would turn RSD's FLOPs savings into no time savings. Here every model gets:

- a static KV cache of ``slots`` sequences x ``max_len`` columns, allocated once;
- one shared write column: every forward (a chunk, or one token for every slot) writes at the next
  free columns, and a per-slot validity mask says which columns each sequence may attend to. A
  rejected step is rolled back by clearing its columns in the mask (no data moves); tokens handed
  over from another model are read as one masked chunk; when the columns run out, each slot's live
  columns are compacted to the left once;
- the one-token decode step captured as a CUDA graph (static inputs, mask and cache addresses),
  with sampling and step-end detection on device and a host sync only every few tokens.

The same code runs eagerly on CPU, where the tests check it against the plain path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

from rsd_core.accounting import FlopCounter
from rsd_core.config import SamplingConfig
from rsd_core.runtime.cached_model import cache_kwarg, embedding_weight
from rsd_core.runtime.graphs import Graphs
from rsd_core.runtime.ledger import Ledger
from rsd_core.sampling import Draws, sample_next


class SlotKVCache:
    """K/V tensors [slots, kv_heads, max_len, head_dim] per layer, written at a shared device pointer.

    It has the small part of transformers' ``Cache`` interface that attention layers use (``update``).
    """

    is_compileable = True

    def __init__(self, n_layers: int, slots: int, kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (slots, kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.ptr = torch.zeros((), dtype=torch.long, device=device)  # next column to write
        self.n_layers, self.max_len = n_layers, max_len
        self.is_sliding = [False] * n_layers
        # Attention reads only the first ``view_len`` columns (a bucket just past the write pointer), so a
        # decode step costs what the sequences hold, not what the cache could hold.
        self.view_len = max_len

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.arange(key_states.shape[-2], device=self.ptr.device) + self.ptr
        self.keys[layer_idx].index_copy_(2, idx, key_states)
        self.values[layer_idx].index_copy_(2, idx, value_states)
        if layer_idx == self.n_layers - 1:
            self.ptr.add_(key_states.shape[-2])
        return self.keys[layer_idx][:, :, : self.view_len], self.values[layer_idx][:, :, : self.view_len]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # positions are always passed explicitly

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.view_len, 0

    def __len__(self) -> int:
        return self.n_layers


@dataclass
class FastSeq(Ledger):
    slot: int = 0
    cols: list[int] = field(default_factory=list)  # cache column of each cached token, in order (n_cached of them)

    def cache_columns(self, cols: range) -> None:
        self.cols.extend(cols)
        self.n_cached = len(self.cols)


def fast_path_supported(model: PreTrainedModel) -> bool:
    """Decoder-only models with plain full attention (Qwen2, Llama, Mistral...), no sliding windows."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layer_types = getattr(cfg, "layer_types", None) or ["full_attention"]
    return (all(t == "full_attention" for t in layer_types) and not getattr(cfg, "use_sliding_window", False)
            and getattr(cfg, "num_key_value_heads", None) is not None)


class FastCachedModel:
    """Same interface as ``runtime.cached_model.CachedModel`` (``new``/``append``/``truncate``/``release``/``run``)."""

    BUCKET = 256  # attention length granularity (one captured graph per bucket in use)

    def __init__(self, model: PreTrainedModel, pad_id: int, keep_last_logits_only: bool = True,
                 max_len: int = 4096, slots: int = 1, use_cuda_graph: bool | None = None):
        self.model, self.pad_id = model, pad_id
        self._cache_kw = cache_kwarg(model)  # looked up once: the decode step is the hot path
        self.flops = FlopCounter.for_model(model)
        self.states: dict[int, FastSeq] = {}
        self.max_len = max_len
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self._shape = (cfg.num_hidden_layers, cfg.num_key_value_heads,
                       getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self._logits_kw = {"logits_to_keep": 1} if keep_last_logits_only else {}
        dev = self.device
        self.use_cuda_graph = dev.type == "cuda" if use_cuda_graph is None else use_cuda_graph
        self._alloc(slots)

    @property
    def device(self) -> torch.device:
        return embedding_weight(self.model).device

    # ------------------------------------------------------------------ slots
    def _alloc(self, slots: int) -> None:
        layers, kv_heads, head_dim = self._shape
        dtype = embedding_weight(self.model).dtype
        self.slots = slots
        self.kv = SlotKVCache(layers, slots, kv_heads, head_dim, self.max_len, dtype, self.device)
        self.valid = torch.zeros(slots, self.max_len, dtype=torch.bool, device=self.device)
        self.col = 0
        self.free = list(range(slots))
        dev, S = self.device, slots
        # Decode state, on device, updated in place by the (graphed) step: see ``_step_body``.
        self.d = {
            "tok": torch.zeros(S, dtype=torch.long, device=dev), "prev": torch.zeros(S, dtype=torch.long, device=dev),
            "pos": torch.zeros(S, dtype=torch.long, device=dev), "done": torch.ones(S, dtype=torch.bool, device=dev),
            "n_gen": torch.zeros(S, dtype=torch.long, device=dev), "eos": torch.zeros(S, dtype=torch.bool, device=dev),
            "budget": torch.zeros(S, dtype=torch.long, device=dev), "t": torch.zeros((), dtype=torch.long, device=dev),
            "gen": torch.zeros(S, self.max_len, dtype=torch.long, device=dev),
        }
        self._chunk_in: dict[int, dict[str, torch.Tensor]] = {}
        self._graphs = Graphs(self.use_cuda_graph)

    def _grow(self, need: int) -> None:
        """More slots: copy the live ones into a bigger cache (rare: the batch grew)."""
        old_kv, old_valid, old_col, old_slots = self.kv, self.valid, self.col, self.slots
        self._alloc(max(need, 2 * old_slots))
        for li in range(old_kv.n_layers):
            self.kv.keys[li][:old_slots] = old_kv.keys[li]
            self.kv.values[li][:old_slots] = old_kv.values[li]
        self.valid[:old_slots] = old_valid
        self.col = old_col
        self.kv.ptr.fill_(old_col)
        used = {s.slot for s in self.states.values()}
        self.free = [i for i in range(self.slots) if i not in used]

    def new(self, seq: int, ids: list[int]) -> None:
        if not self.free:
            self._grow(self.slots + 1)
        self.states[seq] = FastSeq(list(ids), slot=self.free.pop(0))

    def append(self, seq: int, ids: list[int]) -> None:
        self.states[seq].ids.extend(ids)

    def truncate(self, seq: int, n_remove: int) -> None:
        s = self.states[seq]
        keep = s.drop_tail(n_remove)
        if len(s.cols) > keep:  # roll back by index: those columns are simply no longer attended to
            dropped = s.cols[keep:]
            del s.cols[keep:]
            self.valid[s.slot, torch.tensor(dropped, device=self.device)] = False

    def release(self, seq: int) -> None:
        s = self.states.pop(seq, None)
        if s is not None:
            self.valid[s.slot] = False
            self.free.append(s.slot)
        if not any(st.cols for st in self.states.values()):  # nothing cached: start from column 0 again
            self.col = 0
            self.kv.ptr.zero_()

    def _ensure_room(self, n: int) -> None:
        if self.col + n <= self.max_len:
            return
        # Compact: move each slot's live columns to the left, in order.
        live = max((s.n_cached for s in self.states.values()), default=0)
        if live + n > self.max_len:
            raise RuntimeError(f"a sequence needs {live + n} cache columns but the fast cache holds {self.max_len}; "
                               "raise max_len")
        for s in self.states.values():
            if not s.cols:
                continue
            idx = torch.tensor(s.cols, device=self.device)
            for li in range(self.kv.n_layers):
                self.kv.keys[li][s.slot, :, : len(s.cols)] = self.kv.keys[li][s.slot].index_select(1, idx)
                self.kv.values[li][s.slot, :, : len(s.cols)] = self.kv.values[li][s.slot].index_select(1, idx)
            s.cols = list(range(len(s.cols)))
        self.valid.zero_()
        for s in self.states.values():
            self.valid[s.slot, : s.n_cached] = True
        self.col = live
        self.kv.ptr.fill_(live)

    # ------------------------------------------------------------------ forwards
    def _view(self, end: int) -> int:
        """The attention length for a forward that writes up to column ``end``: the next bucket."""
        L = min(self.max_len, -(-end // self.BUCKET) * self.BUCKET)
        self.kv.view_len = L
        return L

    @torch.inference_mode()
    def run(self, seqs: list[int], *, budgets: list[int] | None = None, sampling: SamplingConfig | None = None,
            draws: Draws | None = None, boundary: Any = None, sync_every: int = 8,
            all_positions: bool = False, vocab_limit: int | None = None, constrained: Any = None,
            first_prev: list[int] | None = None,
            probs_out: list[torch.Tensor | None] | None = None) -> tuple[torch.Tensor, list[list[int]], list[bool]]:
        """As ``CachedModel.run``: read the pending tokens of ``seqs``, then decode until each step ends.
        ``probs_out`` is left empty: this path keeps no sampling distributions.

        Rows under a grammar (``constrained``) pick their tokens on the host, so those steps run eagerly.
        """
        states = [self.states[s] for s in seqs]
        chunks = [s.ids[s.n_cached:] for s in states]
        if any(not c for c in chunks):
            raise RuntimeError("internal: a sequence has nothing new to read")
        N = 1 << (max(len(c) for c in chunks) - 1).bit_length()  # chunk widths in powers of two: few graphs
        self._ensure_room(N + (max(budgets) if budgets else 0))
        dev, S, col = self.device, self.slots, self.col
        ids = torch.full((S, N), self.pad_id, dtype=torch.long)  # left-padded: newest token last
        pos = torch.zeros((S, N), dtype=torch.long)
        lens = torch.zeros(S, dtype=torch.long)
        for s, c in zip(states, chunks):
            ids[s.slot, N - len(c):] = torch.tensor(c)
            pos[s.slot, N - len(c):] = torch.arange(s.n_cached, s.n_cached + len(c))
            lens[s.slot] = len(c)
        L = self._view(col + N)
        buf = self._chunk_in.get(N)
        if buf is None:
            buf = self._chunk_in[N] = {k: torch.zeros(shape, dtype=torch.long, device=dev)
                                       for k, shape in (("ids", (S, N)), ("pos", (S, N)), ("lens", (S,)))}
        buf["ids"].copy_(ids)
        buf["pos"].copy_(pos)
        buf["lens"].copy_(lens)
        logits = self._replay(("chunk", N, L, all_positions), lambda: self._chunk_body(N, L, all_positions))
        self.col += N
        for s, c in zip(states, chunks):
            s.cache_columns(range(col + N - len(c), col + N))
            s.usage.prefill_tokens += len(c) - s.own_unfed
            s.usage.flops += self.flops.forward(len(c), s.n_cached - len(c))
            s.usage.calls += 1
            s.own_unfed = 0
        slots = torch.tensor([s.slot for s in states], device=dev)
        if not budgets:
            return logits.index_select(0, slots), [[] for _ in seqs], [False] * len(seqs)

        # Decode: the state lives on device; each step (forward, pick, step-end test) is one graph replay.
        d = self.d
        d["done"].fill_(True)
        d["done"][slots] = False
        d["budget"].zero_()
        d["budget"][slots] = torch.tensor(budgets, device=dev)
        for k in ("n_gen", "eos", "t"):
            d[k].zero_()
        d["prev"].fill_(boundary.none)
        if first_prev is not None:
            d["prev"][slots] = torch.tensor(first_prev, device=dev)
        d["pos"].copy_(buf["pos"][:, -1] + 1)
        limit = min(vocab_limit or logits.shape[-1], logits.shape[-1])
        greedy = sampling is None or sampling.greedy

        if constrained is not None:  # its rows index ``seqs``: here they are the sequences' slots
            constrained.rows = {states[i].slot: c for i, c in constrained.rows.items()}

        by_slot = None  # each sequence's random stream, at its slot
        if draws is not None and not greedy:
            by_slot = Draws(torch.zeros(S, dtype=torch.long, device=dev), torch.zeros(S, dtype=torch.long, device=dev))
            by_slot.keys[slots], by_slot.counts[slots] = draws.keys, draws.counts

        def pick(lg: torch.Tensor) -> torch.Tensor:
            lg = lg[:, :limit]
            tok = lg.argmax(-1) if greedy or sampling is None else sample_next(lg, sampling, by_slot)
            if constrained is not None and constrained.rows:
                tok = constrained.pick(lg, tok, (~d["done"]).tolist(), sampling, by_slot)
            if by_slot is not None:
                by_slot.advance(~d["done"])
            return tok

        self._record(pick(logits), boundary)
        dec_col0 = self.col
        max_budget = max(budgets)
        for t in range(1, max_budget):
            if t % sync_every == 0 and bool(d["done"].all()):
                break
            L = self._view(self.col + 1)
            if greedy and constrained is None:
                # (the boundary itself in the key: it keeps alive the tables the captured graph reads)
                self._replay(("step", L, limit, boundary), lambda: self._step_body(L, pick, boundary))
            else:  # sampling (per-call stream tensors) and grammars (host picks) run the same step eagerly
                self._step_body(L, pick, boundary)
            self.col += 1
        if by_slot is not None and draws is not None:
            draws.counts.copy_(by_slot.counts[slots])
        n_gen_l = d["n_gen"][slots].tolist()
        rows = d["gen"].index_select(0, slots)[:, :max_budget].tolist()
        eos_l = d["eos"][slots].tolist()
        gens = []
        for s, row, n in zip(states, rows, n_gen_l):
            fed = max(0, n - 1)  # the last sampled token is not read yet
            ctx = s.n_cached
            s.cache_columns(range(dec_col0, dec_col0 + fed))
            s.ids.extend(row[:n])
            s.own_unfed = 1
            s.usage.decode_tokens += n
            s.usage.paper_flops += self.flops.weights(n)
            s.usage.flops += self.flops.forward(fed, ctx)
            gens.append(row[:n])
        if probs_out is not None:
            probs_out[:] = [None] * len(seqs)
        return logits.index_select(0, slots), gens, eos_l

    # Bodies: only in-place updates of preallocated tensors, so each can be captured and replayed.
    def _chunk_body(self, N: int, L: int, all_positions: bool) -> torch.Tensor:
        buf, S, dev = self._chunk_in[N], self.slots, self.device
        q = torch.arange(N, device=dev)
        cols = self.kv.ptr + q
        in_chunk = q[None, :] >= (N - buf["lens"])[:, None]  # [S, N]: this column holds a real token
        block = ((q[None, :] <= q[:, None])[None] & in_chunk[:, None, :]) | torch.eye(N, dtype=torch.bool, device=dev)
        mask = self.valid[:, None, None, :L].expand(S, 1, N, L).clone()
        mask.index_copy_(3, cols, block[:, None])  # every query sees itself: no row is fully masked
        out = self.model(input_ids=buf["ids"], attention_mask=mask, position_ids=buf["pos"],
                         use_cache=True, **{self._cache_kw: self.kv}, **({} if all_positions else self._logits_kw))
        self.valid.index_copy_(1, cols, in_chunk)
        return out.logits if all_positions else out.logits[:, -1]

    def _step_body(self, L: int, pick: Any, boundary: Any) -> torch.Tensor:
        d = self.d
        feed = ~d["done"]
        col = self.kv.ptr.clone().view(1)
        self.valid.index_fill_(1, col, True)  # every query sees its own new column: no empty rows
        out = self.model(input_ids=d["tok"][:, None], position_ids=d["pos"][:, None],
                         attention_mask=self.valid[:, None, None, :L], use_cache=True, **{self._cache_kw: self.kv},
                         **self._logits_kw)
        self.valid.index_copy_(1, col, feed[:, None])  # only the slots that were fed keep the column
        d["pos"].add_(feed.long())
        self._record(pick(out.logits[:, -1]), boundary)
        return d["tok"]

    def _record(self, nxt: torch.Tensor, boundary: Any) -> None:
        d = self.d
        live = ~d["done"]
        d["gen"].index_copy_(1, d["t"].view(1), nxt[:, None])
        d["t"].add_(1)
        d["n_gen"].add_(live.long())
        step_end, is_eos = boundary.ends(d["prev"], nxt)
        d["eos"].logical_or_(live & is_eos)
        d["done"].logical_or_(live & (step_end | (d["n_gen"] >= d["budget"])))
        d["prev"].copy_(nxt)
        d["tok"].copy_(nxt)

    def _replay(self, key: tuple, body: Any) -> torch.Tensor:
        """Run ``body`` through a CUDA graph captured on first use (eagerly off CUDA)."""
        return self._graphs.run(key, body, state=[*self.d.values(), self.kv.ptr, self.valid])
