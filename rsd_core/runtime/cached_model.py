"""Per-sequence KV caches over a transformers model, batched over sequences of any length.

Each sequence keeps its own token ids and its own KV tensors. A batched call left-pads the cached
prefixes and the new chunks into one padded batch (masked, with explicit position ids), runs the
chunk and then one token at a time, and cuts each sequence's cache back out, without the padding.
So no model ever re-reads a prefix, a rejected step is undone by dropping cache columns, and tokens
handed over from another model are read lazily, in one chunk, the next time this model is called.
Generators (``backends/hf.py``) and reward models (``rewards/``) both run their models through it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel

from rsd_core.accounting import FlopCounter
from rsd_core.config import SamplingConfig
from rsd_core.constraints import ConstrainedRows
from rsd_core.runtime.ledger import Ledger, Ledgers
from rsd_core.sampling import Draws, sample_next


def embedding_weight(model: Any) -> torch.Tensor:
    """The input embedding matrix (where a model's device, dtype and padded vocabulary size are read)."""
    weight: torch.Tensor = model.get_input_embeddings().weight
    return weight


def cache_kwarg(model: Any) -> str:
    """The name a model's forward takes its KV cache under: ``cache`` (transformers 5.2x on) or
    ``past_key_values`` (earlier releases, and remote code written for them)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


# --------------------------------------------------------------------------- step boundaries


class StepBoundary:
    """Tells, on device and for a whole batch at once, whether a sampled token ends a step.

    A token ends a step when its text contains a delimiter, when a delimiter straddles it and the
    token before it in the same step (``"\\n"`` + ``"\\n"``), or when it is an end-of-sequence token.
    Built once per tokenizer: a lookup table over the vocabulary, so there is no per-token decoding.
    """

    def __init__(self, tokenizer: Any, delimiters: list[str], eos_ids: set[int], vocab_size: int, device: torch.device):
        n = max(vocab_size, len(tokenizer))
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=False)
        texts += [""] * (n - len(texts))
        self.none = n  # index of a "no previous token" sentinel: row n of every table is False
        contains = torch.zeros(n + 1, dtype=torch.bool)
        eos = torch.zeros(n + 1, dtype=torch.bool)
        for i, t in enumerate(texts):
            contains[i] = any(d in t for d in delimiters)
        for e in eos_ids:
            if e < n:
                eos[e] = True
        pairs = []
        for d in delimiters:
            for k in range(1, len(d)):
                ends = torch.tensor([t.endswith(d[:k]) for t in texts] + [False])
                starts = torch.tensor([t.startswith(d[k:]) for t in texts] + [False])
                if ends.any() and starts.any():
                    pairs.append((ends.to(device), starts.to(device)))
        self.contains, self.eos, self.pairs = contains.to(device), eos.to(device), pairs

    def ends(self, prev: torch.Tensor, tok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(step ended, sequence ended) for each row."""
        is_eos = self.eos[tok]
        ended = self.contains[tok] | is_eos
        for ends_with, starts_with in self.pairs:
            ended = ended | (ends_with[prev] & starts_with[tok])
        return ended, is_eos


# --------------------------------------------------------------------------- per-sequence caches


@dataclass
class SeqState(Ledger):
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer, [1, heads, n_cached, dim]


def _cache_layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))  # transformers < 4.56


class CachedModel(Ledgers):
    """A transformers model run over many sequences, each with its own KV cache."""

    def __init__(self, model: PreTrainedModel, pad_id: int, keep_last_logits_only: bool = True):
        self.model = model
        self.pad_id = pad_id
        self.flops = FlopCounter.for_model(model)
        self.states: dict[int, SeqState] = {}
        params = inspect.signature(model.forward).parameters
        self._cache_kw = cache_kwarg(model)
        self._logits_kw = {"logits_to_keep": 1} if keep_last_logits_only and "logits_to_keep" in params else {}

    @property
    def device(self) -> torch.device:
        return embedding_weight(self.model).device

    # sequence bookkeeping -------------------------------------------------
    def new(self, seq: int, ids: list[int]) -> None:
        self.states[seq] = SeqState(list(ids))

    def append(self, seq: int, ids: list[int]) -> None:
        self.states[seq].ids.extend(ids)

    def truncate(self, seq: int, n_remove: int) -> None:
        s = self.states[seq]
        cached = s.n_cached
        keep = s.drop_tail(n_remove)
        if cached > keep:  # roll the cache back by index
            s.kv = [(k[:, :, :keep], v[:, :, :keep]) for k, v in s.kv or []]

    def release(self, seq: int) -> None:
        self.states.pop(seq, None)

    def count_scored(self, seq: int, n_tokens: int) -> None:
        """A PRM's share of the paper's FLOPs count: the step tokens it scored."""
        self.states[seq].usage.paper_flops += self.flops.weights(n_tokens)

    # the batched forward ----------------------------------------------------
    @torch.inference_mode()
    def run(
        self,
        seqs: list[int],
        *,
        budgets: list[int] | None = None,
        sampling: SamplingConfig | None = None,
        draws: Draws | None = None,
        boundary: StepBoundary | None = None,
        sync_every: int = 1,
        all_positions: bool = False,
        vocab_limit: int | None = None,
        constrained: ConstrainedRows | None = None,
        first_prev: list[int] | None = None,
        probs_out: list[torch.Tensor | None] | None = None,
    ) -> tuple[torch.Tensor, list[list[int]], list[bool]]:
        """Read every sequence's pending tokens, then (with ``budgets``) sample until each step ends.
        ``constrained`` picks the tokens of the rows (indices into ``seqs``) that follow a grammar.
        ``first_prev``: the token before the step, per row (a delimiter may straddle it); ``probs_out``:
        filled with each row's sampling distributions ([n, V]; None when greedy).

        Returns (logits, generated tokens per row, ended-at-eos per row). Logits are those after the
        last pending token ([B, V]), or at every pending position ([B, N, V], left-padded) when
        ``all_positions`` is set.
        """
        states = [self.states[s] for s in seqs]
        dev = self.device
        past = [s.n_cached for s in states]
        chunks = [s.ids[s.n_cached :] for s in states]
        if any(not c for c in chunks):
            raise RuntimeError("internal: a sequence has nothing new to read")
        B, P, N = len(states), max(past), max(len(c) for c in chunks)
        # Left-pad each chunk so every row's newest token sits in the last column.
        ids = torch.tensor([[self.pad_id] * (N - len(c)) + c for c in chunks], device=dev)
        mask = torch.zeros(B, P + N, dtype=torch.long)
        pos = torch.zeros(B, N, dtype=torch.long)
        for i, (p, c) in enumerate(zip(past, chunks)):
            mask[i, P - p : P] = 1
            mask[i, P + N - len(c) :] = 1
            pos[i, N - len(c) :] = torch.arange(p, p + len(c))
        mask, pos = mask.to(dev), pos.to(dev)
        cache = self._stack_past(states, P)
        kw = {} if all_positions else self._logits_kw
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                         **{self._cache_kw: cache}, **kw)
        # Sequence classifiers (outcome reward models) already pool to [B, labels].
        logits = out.logits if all_positions or out.logits.dim() == 2 else out.logits[:, -1]
        for s, p, c in zip(states, past, chunks):
            s.usage.prefill_tokens += len(c) - s.own_unfed
            s.usage.flops += self.flops.forward(len(c), p)
            s.usage.calls += 1
            s.own_unfed = 0

        gen_lists: list[list[int]] = [[] for _ in seqs]
        eos_flags = [False] * B
        n_gen_list = [0] * B
        if budgets:
            assert sampling is not None and boundary is not None
            drawn: list[torch.Tensor] | None = [] if probs_out is not None and not sampling.greedy else None
            gen, n_gen, eos = self._decode(logits, cache, mask, pos[:, -1] + 1, budgets, sampling, draws, boundary,
                                           sync_every, vocab_limit or logits.shape[-1], constrained, first_prev, drawn)
            n_gen_list = n_gen.tolist()
            gen_rows = gen.tolist()
            eos_flags = eos.tolist()
            gen_lists = [row[:n] for row, n in zip(gen_rows, n_gen_list)]
            if probs_out is not None:
                stacked = torch.stack(drawn, 1) if drawn else None  # [B, T, V]
                probs_out[:] = [stacked[i, :n] if stacked is not None else None for i, n in enumerate(n_gen_list)]

        # Cut each row's cache out of the padded batch: [its past] + [its chunk and fed decode tokens].
        layers = _cache_layers(cache)
        for i, (s, p, c) in enumerate(zip(states, past, chunks)):
            fed = max(0, n_gen_list[i] - 1)  # the last sampled token is not read yet
            if B == 1:
                s.kv = layers if P + N + fed == layers[0][0].shape[2] else [(k[:, :, : P + N + fed], v[:, :, : P + N + fed]) for k, v in layers]
            else:
                idx = torch.cat([torch.arange(P - p, P), torch.arange(P + N - len(c), P + N + fed)]).to(dev)
                s.kv = [(k[i : i + 1].index_select(2, idx), v[i : i + 1].index_select(2, idx)) for k, v in layers]
            s.n_cached = len(s.ids) + fed
            if gen_lists[i]:
                s.ids.extend(gen_lists[i])
                s.own_unfed = 1
                s.usage.decode_tokens += len(gen_lists[i])
                s.usage.paper_flops += self.flops.weights(len(gen_lists[i]))
                s.usage.flops += self.flops.forward(fed, p + len(c))
        return logits, gen_lists, eos_flags

    def _stack_past(self, states: list[SeqState], P: int) -> DynamicCache:
        if P == 0:
            return DynamicCache()
        if len(states) == 1:
            return DynamicCache(ddp_cache_data=states[0].kv)
        n_layers = len(next(s.kv for s in states if s.kv))
        data = []
        for layer in range(n_layers):
            ref = next(s.kv[layer][0] for s in states if s.kv)
            k = ref.new_zeros((len(states), ref.shape[1], P, ref.shape[3]))
            v = torch.zeros_like(k)
            for i, s in enumerate(states):
                if s.n_cached and s.kv:
                    k[i, :, P - s.n_cached :] = s.kv[layer][0][0]
                    v[i, :, P - s.n_cached :] = s.kv[layer][1][0]
            data.append((k, v))
        return DynamicCache(ddp_cache_data=data)

    def _decode(self, logits, cache, mask, next_pos, budgets, sampling, draws, boundary, sync_every, limit,
                constrained=None, first_prev=None, drawn=None):
        dev = logits.device
        B, max_budget = logits.shape[0], max(budgets)
        budget_t = torch.tensor(budgets, device=dev)
        gen = torch.full((B, max_budget), self.pad_id, dtype=torch.long, device=dev)
        n_gen = torch.zeros(B, dtype=torch.long, device=dev)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        eos = torch.zeros(B, dtype=torch.bool, device=dev)
        prev = (torch.tensor(first_prev, device=dev) if first_prev is not None
                else torch.full((B,), boundary.none, dtype=torch.long, device=dev))
        for t in range(max_budget):
            active = ~done
            tok = sample_next(logits[:, :limit], sampling, draws, drawn)  # ids past the tokenizer are padding
            if constrained is not None and constrained.rows:  # a host sync per token, only for these rows
                tok = constrained.pick(logits[:, :limit], tok, active.tolist(), sampling, draws)
            if draws is not None:
                draws.advance(active)  # a row's stream moves only with its own draws
            gen[:, t] = tok
            n_gen += active
            step_end, is_eos = boundary.ends(prev, tok)
            eos |= active & is_eos
            done |= active & (step_end | (n_gen >= budget_t))
            prev = tok
            if (t + 1) % sync_every == 0 and bool(done.all()):
                break
            if t + 1 == max_budget:
                break
            feed = (~done).long()
            mask = torch.cat([mask, feed[:, None]], dim=1)
            out = self.model(
                input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                use_cache=True, **{self._cache_kw: cache}, **self._logits_kw,
            )
            next_pos = next_pos + feed
            logits = out.logits[:, -1]
        # Rows that finished before a later sync may have sampled extra tokens: n_gen already excludes them.
        return gen, n_gen, eos
