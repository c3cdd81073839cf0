"""The native decode engine: the Llama family's native forward (``native_forward.py``) over KV slots
with a length per slot (``runtime/slots.py``), behind the same interface as ``runtime.cached_model.CachedModel``.

What it changes against the transformers path:

- Each sequence's KV lives in its own slot, written at the slot's length: handing over a step or
  reading a prompt is one forward over the new tokens only; rolling back is ``length -= n``.
- A row leaves the decode batch the token its step ends (delimiter, EOS, budget): later forwards
  run over the rows still writing, none idle and none masked.
- No transformers cache object is involved, so no dependence on its internals.

Example:
    >>> eng = NativeCachedModel(model, pad_id=0)                          # doctest: +SKIP
    >>> eng.new(0, prompt_ids)                                           # doctest: +SKIP
    >>> _, gens, eos = eng.run([0], budgets=[64], sampling=SamplingConfig(), boundary=boundary)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rsd_core.accounting import FlopCounter
from rsd_core.config import SamplingConfig
from rsd_core.runtime.cached_model import CachedModel, embedding_weight
from rsd_core.runtime.device_loop import DeviceLoop
from rsd_core.runtime.ledger import Ledger, Ledgers
from rsd_core.runtime.native_forward import NativeForward, native_unsupported
from rsd_core.sampling import Draws, sample_next

__all__ = ["NativeCachedModel", "StepHook", "native_unsupported", "scorer_cache"]

# Steps that ended at one token, [(row, the step's tokens, ended at EOS, the distributions they were drawn
# from or None)] -> each row's next budget
StepHook = Callable[[list[tuple[int, list[int], bool, torch.Tensor | None]]], list[int]]


@dataclass
class SlotSeq(Ledger):
    slot: int = 0  # n_cached == the slot's length, always


class NativeCachedModel(Ledgers):
    """Same interface as ``CachedModel`` (``new``/``append``/``truncate``/``release``/``run``/``states``)."""

    def __init__(self, model: Any, pad_id: int, max_len: int = 4096, device_loop: bool | None = None,
                 window: int = 8, compiled: bool = False):
        """``device_loop``: decode with the loop's state on the device, each token a replayed CUDA graph, the
        host looking when a step ends or every ``window`` tokens (``runtime/device_loop.py``); default: on
        CUDA, or when ``compiled``.
        ``compiled``: that loop's forward through ``torch.compile`` (on CPU too: a minute to compile, then
        faster per token)."""
        self.model, self.pad_id = model, pad_id
        self.forward = NativeForward.build(model, max_len)
        self.cache = self.forward.new_cache(1)
        self.cache.max_len = max_len
        self.flops = FlopCounter.for_model(model)
        self.states: dict[int, SlotSeq] = {}
        self.forwards = 0  # forward passes so far (all sequences together)
        self.forward_rows = 0  # rows those forwards read, summed (a row is a sequence writing or reading)
        self.rows_computed = 0  # rows those forwards computed, idle rows of the device loop included
        use = (self.device.type == "cuda" or compiled) if device_loop is None else device_loop
        self.device_loop = DeviceLoop(self, window=window, compiled=compiled) if use else None

    @property
    def device(self) -> torch.device:
        return embedding_weight(self.model).device

    # sequence bookkeeping -------------------------------------------------
    def new(self, seq: int, ids: list[int]) -> None:
        if seq in self.states:
            self.release(seq)
        self.states[seq] = SlotSeq(list(ids), slot=self.cache.acquire())

    def append(self, seq: int, ids: list[int]) -> None:
        self.states[seq].ids.extend(ids)

    def truncate(self, seq: int, n_remove: int) -> None:
        s = self.states[seq]
        s.drop_tail(n_remove)
        self.cache.lengths[s.slot] = s.n_cached  # the dropped columns are simply no longer read

    def release(self, seq: int) -> None:
        s = self.states.pop(seq, None)
        if s is not None:
            self.cache.free(s.slot)

    def count_scored(self, seq: int, n_tokens: int) -> None:
        self.states[seq].usage.paper_flops += self.flops.weights(n_tokens)

    # forwards -------------------------------------------------------------
    def _read(self, states: list[SlotSeq], chunks: list[list[int]], all_positions: bool) -> torch.Tensor:
        """One forward over each sequence's new tokens (right-padded into one batch)."""
        N = max(len(c) for c in chunks)
        starts = [s.n_cached for s in states]
        for s, c in zip(states, chunks):
            self.cache.check_room(s.slot, len(c))
        if len(states) > 1 and max(starts) + N > self.cache.max_len:  # a padded column would not fit
            parts = [self._read([s], [c], all_positions) for s, c in zip(states, chunks)]
            if not all_positions:
                return torch.cat(parts)
            out = parts[0].new_zeros((len(parts), N, parts[0].shape[-1]))
            for i, p in enumerate(parts):
                out[i, N - p.shape[1]:] = p[0]
            return out
        self.cache.reserve(max(starts) + N)  # padded columns are written too (past their slot's length)
        ids = torch.tensor([c + [self.pad_id] * (N - len(c)) for c in chunks], device=self.device)
        last = None if all_positions else [len(c) - 1 for c in chunks]
        logits = self.forward(ids, [s.slot for s in states], starts, self.cache, last=last)
        self.forwards += 1
        self.forward_rows += len(states)
        self.rows_computed += len(states)
        for s, c in zip(states, chunks):
            self.cache.lengths[s.slot] += len(c)
            s.n_cached = len(s.ids)
        if all_positions and any(len(c) < N for c in chunks):  # the contract's layout: left-padded
            out = torch.zeros_like(logits)
            for i, c in enumerate(chunks):
                out[i, N - len(c):] = logits[i, : len(c)]
            logits = out
        return logits

    @torch.inference_mode()
    def run(
        self,
        seqs: list[int],
        *,
        budgets: list[int] | None = None,
        sampling: SamplingConfig | None = None,
        draws: Draws | None = None,
        boundary: Any = None,
        sync_every: int = 1,
        all_positions: bool = False,
        vocab_limit: int | None = None,
        constrained: Any = None,
        first_prev: list[int] | None = None,
        probs_out: list[torch.Tensor | None] | None = None,
        on_step_end: StepHook | None = None,
        resume: list[list[int]] | None = None,
    ) -> tuple[torch.Tensor, list[list[int]], list[bool]]:
        """As ``CachedModel.run``: read every sequence's pending tokens, then (with ``budgets``) sample until
        each step ends. ``first_prev``: the token before the step, per row (a delimiter may straddle it);
        ``probs_out``: filled with each row's sampling distributions ([n, V]; None when greedy).

        ``on_step_end([(row, tokens, eos, probs), ...])``: called the token the steps of those rows end (all rows
        whose step ended at that token, together), with each sequence's ledger already holding its step;
        it returns each row's budget for its next step, which the row goes on to write in the same batch
        (0: the row stops; any negative: every row stops where it is). With it, every finished step goes
        to the hook, and the returned token lists hold what stopped rows had written of an unfinished
        step; ``resume`` hands such partial steps back, to be written on."""
        states = [self.states[s] for s in seqs]
        chunks = [s.pending for s in states]
        if any(not c for c in chunks):
            raise RuntimeError("internal: a sequence has nothing new to read")
        logits = self._read(states, chunks, all_positions)
        for s, c in zip(states, chunks):
            s.usage.prefill_tokens += len(c) - s.own_unfed
            s.usage.flops += self.flops.forward(len(c), s.n_cached - len(c))
            s.usage.calls += 1
            s.own_unfed = 0
        B = len(states)
        gens: list[list[int]] = [[] for _ in seqs]
        eos = [False] * B
        if not budgets:
            return logits, gens, eos
        assert sampling is not None and boundary is not None
        dev = self.device
        budgets = list(budgets)
        limit = min(vocab_limit or logits.shape[-1], logits.shape[-1])
        row_probs: list[list[torch.Tensor]] = [[] for _ in seqs]
        keep_probs = probs_out is not None and not sampling.greedy
        if resume is not None:
            gens = [list(r) for r in resume]
            first_prev = [r[-1] if r else boundary.none for r in resume]
        books = [_Unsettled(s.n_cached) for s in states]
        if self.device_loop is not None and constrained is None:
            eos = self.device_loop.decode(states, logits[:, -1] if all_positions else logits, budgets, sampling,
                                          draws, boundary, limit, first_prev, on_step_end, gens, books, probs_out)
            self._settle(states, books)
            return logits, gens, eos
        prev = torch.tensor(first_prev if first_prev is not None else [boundary.none] * B, device=dev)
        full = logits.clone()  # the newest logits of every row (rows that finished keep stale ones, unread)
        active = list(range(B))
        while active:
            drawn: list[torch.Tensor] = []
            tok = sample_next(full[:, :limit], sampling, draws, drawn if keep_probs else None)
            if (constrained is not None and constrained.rows) or draws is not None:
                live = [False] * B
                for i in active:
                    live[i] = True
                if constrained is not None and constrained.rows:
                    tok = constrained.pick(full[:, :limit], tok, live, sampling, draws)
                if draws is not None:  # a row's stream moves only with its own draws
                    draws.advance(torch.tensor(live, device=dev))
            step_end, is_eos = boundary.ends(prev, tok)
            prev = tok
            tok_l, end_l, eos_l = tok.tolist(), step_end.tolist(), is_eos.tolist()
            still, ended = [], []
            for i in active:
                s, t = states[i], tok_l[i]
                gens[i].append(t)
                s.ids.append(t)  # the ledger follows token by token: a hook sees the sequence as it is
                s.own_unfed = 1
                books[i].generated += 1
                if keep_probs:
                    row_probs[i].append(drawn[0][i])
                if eos_l[i]:
                    eos[i] = True
                if not (end_l[i] or eos_l[i] or len(gens[i]) >= budgets[i]):
                    still.append(i)
                elif on_step_end is not None:
                    books[i].settle(s, self.flops)
                    probs = torch.stack(row_probs[i]) if keep_probs and row_probs[i] else None
                    row_probs[i] = []
                    ended.append((i, gens[i], bool(eos_l[i]), probs))
            fresh = []
            if ended:
                assert on_step_end is not None
                nexts = on_step_end(ended)
                for (i, _, at_eos, _), nxt in zip(ended, nexts):
                    gens[i] = []
                    if nxt > 0 and not at_eos:
                        budgets[i] = nxt
                        fresh.append(i)
                if any(n < 0 for n in nexts):
                    break
                still = sorted(still + fresh)
            active = still
            if not active:
                break
            if fresh:  # a new step starts: no delimiter straddles into it
                prev[torch.tensor(fresh, device=dev)] = boundary.none
            # The rows still writing read their newest token; the others are done (no idle rows).
            act = [states[i] for i in active]
            ids = torch.tensor([[tok_l[i]] for i in active], device=dev)
            for st in act:
                self.cache.check_room(st.slot, 1)
            out = self.forward(ids, [st.slot for st in act], [self.cache.lengths[st.slot] for st in act], self.cache,
                               last=[0] * len(act))
            self.forwards += 1
            self.forward_rows += len(act)
            self.rows_computed += len(act)
            for i, st in zip(active, act):
                self.cache.lengths[st.slot] += 1
                st.n_cached += 1
                st.own_unfed = 0
                books[i].fed += 1
            full[torch.tensor(active, device=dev)] = out
        self._settle(states, books)
        if probs_out is not None:
            probs_out[:] = [torch.stack(p) if p else None for p in row_probs]
        return logits, gens, eos

    def _settle(self, states: list[SlotSeq], books: list[_Unsettled]) -> None:
        for s, book in zip(states, books):
            book.settle(s, self.flops)
            s.own_unfed = 1 if s.n_cached < len(s.ids) else 0


def scorer_cache(model: Any, pad_id: int, keep_last_logits_only: bool = True) -> CachedModel | NativeCachedModel:
    """The per-sequence cache a reward model reads its steps through: the native engine where it runs
    the model (a causal LM of the Llama family, off CUDA, as generators pick it), transformers' own
    forward otherwise (heads other than the LM head, CUDA, other families)."""
    max_len = int(getattr(getattr(model, "config", None), "max_position_embeddings", 0) or 4096)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if (embedding_weight(model).device.type != "cuda" and isinstance(head, torch.nn.Linear)
            and native_unsupported(model, max_len) is None):
        return NativeCachedModel(model, pad_id, max_len=max_len)
    return CachedModel(model, pad_id, keep_last_logits_only=keep_last_logits_only)


@dataclass
class _Unsettled:
    """Tokens a row sampled and fed since its usage was last brought up to date."""

    ctx: int  # tokens cached before the first of them was fed
    generated: int = 0
    fed: int = 0

    def settle(self, s: SlotSeq, flops: FlopCounter) -> None:
        s.usage.decode_tokens += self.generated
        s.usage.paper_flops += flops.weights(self.generated)
        s.usage.flops += flops.forward(self.fed, self.ctx)
        self.ctx += self.fed
        self.generated = self.fed = 0
