"""Local transformers models behind the generator contract.

The per-sequence KV caches live in ``runtime/cached_model.py`` (plain path), ``runtime/native_engine.py``
and ``backends/fast.py`` (static slots, CUDA graphs); prompts are rendered in ``backends/rendering.py``;
this module picks the engine, hands out steps and verifies a rejected step for its rewrite.

Example:
    >>> gen = HFGenerator.from_pretrained("path/to/model")            # doctest: +SKIP
    >>> gen.start(0, gen.render_prompt([{"role": "user", "content": "2+2?"}]))  # doctest: +SKIP
    >>> gen.generate_step([0], budgets=[64])[0].text                   # doctest: +SKIP
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Literal

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from rsd_core.accounting import ModelUsage
from rsd_core.backends.base import Step
from rsd_core.backends.fast import FastCachedModel, fast_path_supported
from rsd_core.backends.rendering import ChatPrompts, context_length, eos_token_ids, render_prompt
from rsd_core.backends.speculation import verify
from rsd_core.config import SamplingConfig
from rsd_core.constraints import ConstrainedRows, Cursor
from rsd_core.runtime.cached_model import CachedModel, StepBoundary, embedding_weight
from rsd_core.runtime.loading import load_pretrained, pop_load_kwargs
from rsd_core.runtime.native_engine import NativeCachedModel, native_unsupported
from rsd_core.sampling import Draws

__all__ = ["CachedModel", "HFGenerator", "StepBoundary", "context_length", "eos_token_ids", "load_pretrained",
           "render_prompt"]

# --------------------------------------------------------------------------- the generator

Engine = Literal["auto", "native", "fast", "transformers"]


def pick_engine(model: PreTrainedModel, engine: Engine, fast: bool | None, max_len: int) -> Engine:
    """``auto``: the native engine for the Llama family off CUDA, the CUDA-graph path on CUDA where it
    applies, transformers' own forward otherwise. ``fast`` (the older switch) still picks the CUDA-graph path."""
    if engine not in ("auto", "native", "fast", "transformers"):
        raise ValueError(f"engine={engine!r}: use 'auto', 'native', 'fast' or 'transformers'")
    if fast is not None and engine == "auto":
        return "fast" if fast else "transformers"
    if engine == "native":
        why = native_unsupported(model, max_len)
        if why is not None:
            raise ValueError(f"engine='native' cannot run {type(model).__name__}: {why}; use engine='auto'")
        return engine
    if engine != "auto":
        return engine
    on_gpu = embedding_weight(model).device.type == "cuda"
    if on_gpu:
        return "fast" if fast_path_supported(model) else "transformers"
    return "native" if native_unsupported(model, max_len) is None else "transformers"


class HFGenerator(ChatPrompts):
    """A transformers causal LM behind the generator contract (see ``backends.base.Generator``)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        *,
        sampling: SamplingConfig | None = None,
        step_delimiters: list[str] | None = None,
        name: str | None = None,
        sync_every: int | None = None,
        fast: bool | None = None,
        engine: Engine = "auto",
        max_len: int | None = None,
        device_loop: bool | None = None,
        compiled: bool = False,
    ):
        """``engine``: ``native`` (the Llama family's own forward over KV slots, ``runtime/native_engine.py``),
        ``fast`` (static cache and CUDA graphs over transformers' modules, ``backends/fast.py``),
        ``transformers`` (its forward and cache) or ``auto`` (see ``pick_engine``). ``max_len``: the most
        tokens a sequence's cache holds: for ``native``, the model's context by default (columns are
        allocated as sequences grow); for ``fast``, 4096 (allocated at once). ``device_loop``: the native
        engine decodes with its loop on the device, the host looking when a step ends, each token a CUDA graph
        (default: on CUDA); ``compiled``: that loop's forward goes through ``torch.compile`` (fused kernels)."""
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or getattr(model, "name_or_path", None) or type(model).__name__
        self.sampling = sampling or SamplingConfig()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        pad = pad if pad is not None else 0
        self.context_length = context_length(model)
        native_len = min(max_len or self.context_length, self.context_length)
        self.engine = pick_engine(model, engine, fast, native_len)
        self.cached: CachedModel | FastCachedModel | NativeCachedModel
        if self.engine == "native":
            self.cached = NativeCachedModel(model, pad, max_len=native_len, device_loop=device_loop,
                                            compiled=compiled)
            self.context_length = native_len
        elif self.engine == "fast":
            self.cached = FastCachedModel(model, pad, max_len=max_len or 4096)
        else:
            self.cached = CachedModel(model, pad)
        self.eos_ids = eos_token_ids(model, tokenizer)
        # A sampled step keeps the distributions its tokens were drawn from, for a speculated rewrite
        # (the decoder turns this on when it will need them).
        self.keep_probs = False
        self._delimiters = list(step_delimiters or ["\n\n"])
        self._boundary: StepBoundary | None = None
        # On CPU a host sync is free; on an accelerator, check for "all rows done" every few tokens.
        self.sync_every = sync_every or (1 if self.cached.device.type == "cpu" else 8)
        self._keys = random.Random()  # the streams of sequences no one gave one (``set_stream``)
        self._partial_probs: dict[int, torch.Tensor] = {}  # a stopped step's distributions, until it resumes

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> HFGenerator:
        load_kw = pop_load_kwargs(kwargs)
        model, tok = load_pretrained(AutoModelForCausalLM, name_or_path, **load_kw)
        return cls(model, tok, name=name_or_path, **kwargs)

    # configuration -----------------------------------------------------------
    def set_step_delimiters(self, delimiters: list[str]) -> None:
        if delimiters != self._delimiters:
            self._delimiters, self._boundary = list(delimiters), None

    @property
    def boundary(self) -> StepBoundary:
        if self._boundary is None:
            vocab = int(embedding_weight(self.model).shape[0])
            self._boundary = StepBoundary(self.tokenizer, self._delimiters, self.eos_ids, vocab, self.cached.device)
        return self._boundary

    def reseed(self, seed: int | None) -> None:
        """Sequences started from now on without a stream of their own get streams drawn from ``seed``."""
        self._keys = random.Random(seed)

    def set_stream(self, seq: int, key: int) -> None:
        """The random stream the sequence samples from (``sampling.Draws``): with the same key it draws
        the same tokens whatever it is batched with."""
        st = self.cached.states[seq]
        st.stream, st.draws = key, 0

    def _draws(self, seqs: list[int]) -> Draws | None:
        if self.sampling.greedy:
            return None
        states = [self.cached.states[s] for s in seqs]
        return Draws.of([st.stream for st in states], [st.draws for st in states], self.cached.device)

    def _own_generator(self, st: Any) -> torch.Generator:
        """A generator for one host-side draw of a sequence (a rewrite's verification), from its stream."""
        g = Draws.of([st.stream], [st.draws], self.cached.device).generator(0)
        st.draws += 1
        return g

    def _drew(self, seqs: list[int], draws: Draws | None) -> None:
        """Keep each sequence's count of draws (those released meanwhile are gone)."""
        if draws is not None:
            for s, n in zip(seqs, draws.counts.tolist()):
                if s in self.cached.states:
                    self.cached.states[s].draws = n

    # the contract --------------------------------------------------------------
    def start(self, seq: int, prompt_ids: list[int]) -> None:
        self.cached.new(seq, prompt_ids)
        self.cached.states[seq].stream = self._keys.getrandbits(63)

    def extend(self, seqs: list[int], token_ids: list[list[int]]) -> None:
        for s, ids in zip(seqs, token_ids):
            self.cached.append(s, ids)

    def generate_step(self, seqs: list[int], budgets: list[int], constraints: list[Cursor | None] | None = None,
                      proposals: list[Step | None] | None = None) -> list[Step]:
        """``proposals``: per row, a step another model wrote with this tokenizer (with ``probs`` if it was
        sampled; without, it was picked greedily); the target keeps the longest prefix of it that its own
        decoding would produce (``backends/speculation.py``), then writes on. The result is the same as
        without it; only fewer forwards run."""
        if not seqs:
            return []
        budgets = [max(1, min(b, self.context_length - len(self.cached.states[s].ids))) for s, b in zip(seqs, budgets)]
        rows = {i: c for i, c in enumerate(constraints or []) if c is not None}
        heads: list[list[int]] = [[] for _ in seqs]  # tokens already decided by verification, per row
        forwards = [0] * len(seqs)
        kept = [0] * len(seqs)
        open_rows = list(range(len(seqs)))
        spec = [i for i, p in enumerate(proposals or []) if p is not None and p.token_ids and i not in rows]
        if spec:
            open_rows = self._verify(seqs, budgets, spec, proposals, heads, kept, forwards)  # type: ignore[arg-type]
        gens: list[list[int]] = [[] for _ in seqs]
        eos = [False] * len(seqs)
        probs: list[torch.Tensor | None] = [None] * len(seqs)
        if open_rows:
            sub_rows = {open_rows.index(i): c for i, c in rows.items() if i in open_rows}
            drawn: list[torch.Tensor | None] = []
            sub = [seqs[i] for i in open_rows]
            draws = self._draws(sub)
            _, sub_gens, sub_eos = self.cached.run(
                sub, budgets=[budgets[i] - len(heads[i]) for i in open_rows],
                sampling=self.sampling, draws=draws, boundary=self.boundary, sync_every=self.sync_every,
                vocab_limit=len(self.tokenizer),
                constrained=(ConstrainedRows(sub_rows, self.tokenizer, self.eos_ids, len(self.tokenizer))
                             if sub_rows else None),
                first_prev=[heads[i][-1] if heads[i] else self.boundary.none for i in open_rows],
                probs_out=drawn if self.keep_probs else None,
            )
            self._drew(sub, draws)
            for j, i in enumerate(open_rows):
                gens[i], eos[i] = sub_gens[j], sub_eos[j]
                forwards[i] += len(sub_gens[j])  # reading the pending tokens, then one per token fed
                probs[i] = drawn[j] if drawn else None
        ids = [head + gen for head, gen in zip(heads, gens)]
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [self._make_step(t_ids, text, eos[i] or (bool(t_ids) and t_ids[-1] in self.eos_ids and not gens[i]),
                                probs=probs[i], forwards=forwards[i], speculated=kept[i])
                for i, (t_ids, text) in enumerate(zip(ids, texts))]

    @property
    def steps_back_to_back(self) -> bool:
        """Whether a row goes on with its next step inside one batched decode (the native engine, with
        this class's own stepping: a subclass that replaces ``generate_step`` steps its own way)."""
        return (isinstance(self.cached, NativeCachedModel)
                and type(self).generate_step is HFGenerator.generate_step)

    def generate_steps(self, seqs: list[int], budgets: list[int],
                       on_steps: Callable[[list[tuple[int, Step]]], list[int]],
                       resume: list[list[int]] | None = None) -> list[list[int]]:
        """Each row writes step after step; the steps that end at the same token go to
        ``on_steps([(row, step), ...])`` at once, which returns each row's budget for its next step
        (0: the row stops; any negative: every row stops where it is). Returns, per row, the tokens of a
        step it was stopped in the middle of; ``resume`` gives them back to write on (native engine).

        On the native engine a row goes straight on with its next step in the same batch, so no row
        waits for the others' steps to end; elsewhere the rows still writing take their steps together."""
        def room(i: int, nxt: int) -> int:
            return nxt if nxt <= 0 else max(1, min(nxt, self.context_length - self.num_tokens(seqs[i])))

        budgets = [room(i, b) for i, b in enumerate(budgets)]
        if self.steps_back_to_back:
            assert isinstance(self.cached, NativeCachedModel)
            # A resumed step's first tokens were drawn in an earlier call: their distributions come with it.
            carried = {i: self._partial_probs.pop(seqs[i]) for i, r in enumerate(resume or [])
                       if r and seqs[i] in self._partial_probs}

            def hook(ended: list[tuple[int, list[int], bool, torch.Tensor | None]]) -> list[int]:
                steps = []
                for i, tokens, eos, probs in ended:
                    if i in carried:
                        probs = carried.pop(i) if probs is None else torch.cat([carried.pop(i), probs])
                    steps.append((i, self._step(list(tokens), eos, probs)))
                return [room(i, n) for (i, *_), n in zip(ended, on_steps(steps))]

            draws = self._draws(seqs)
            drawn: list[torch.Tensor | None] = []
            try:
                _, partial, _ = self.cached.run(seqs, budgets=budgets, sampling=self.sampling, draws=draws,
                                                boundary=self.boundary, vocab_limit=len(self.tokenizer),
                                                on_step_end=hook, resume=resume,
                                                probs_out=drawn if self.keep_probs else None)
            finally:
                self._drew(seqs, draws)
            for i, (toks, p) in enumerate(zip(partial, drawn)):  # the stopped steps' distributions so far
                if toks and p is not None and seqs[i] in self.cached.states:
                    self._partial_probs[seqs[i]] = torch.cat([carried.pop(i), p]) if i in carried else p
            return partial
        if resume is not None and any(resume):
            raise ValueError("only the native engine resumes a partial step")
        rows = list(range(len(seqs)))
        while rows:
            steps = self.generate_step([seqs[i] for i in rows], [budgets[i] for i in rows])
            nexts = on_steps(list(zip(rows, steps)))
            if any(n < 0 for n in nexts):
                break
            going = []
            for i, st, nxt in zip(rows, steps, nexts):
                if nxt > 0 and not st.eos:
                    budgets[i] = room(i, nxt)
                    going.append(i)
            rows = going
        return [[] for _ in seqs]

    def _step(self, ids: list[int], eos: bool, probs: torch.Tensor | None = None) -> Step:
        return self._make_step(ids, self.tokenizer.decode(ids, skip_special_tokens=True), eos, probs=probs,
                               forwards=len(ids))

    def _make_step(self, ids: list[int], text: str, eos: bool, **counts: Any) -> Step:
        return Step(ids, text, eos, (not eos) and any(text.endswith(d) or d in text for d in self._delimiters),
                    **counts)

    def _verify(self, seqs: list[int], budgets: list[int], spec: list[int], proposals: list[Step],
                heads: list[list[int]], kept: list[int], forwards: list[int]) -> list[int]:
        """Read each proposal in one forward and keep what the target's own decoding agrees with.
        Fills ``heads`` (kept tokens plus the target's next token); returns the rows still writing."""
        states = self.cached.states
        props = [proposals[i].token_ids[: budgets[i]] for i in spec]
        for i, p in zip(spec, props):
            self.cached.append(seqs[i], p)
        logits, _, _ = self.cached.run([seqs[i] for i in spec], all_positions=True)  # [B, N, V], left-padded
        limit = len(self.tokenizer)
        N = logits.shape[1]
        open_rows = [i for i in range(len(seqs)) if i not in spec]
        for j, (i, p) in enumerate(zip(spec, props)):
            m = len(p)
            q = proposals[i].probs
            s = states[seqs[i]]
            k, nxt = verify(logits[j, N - m - 1:, :limit], p, None if q is None else q[:m], self.sampling,
                            None if self.sampling.greedy else self._own_generator(s))
            end = self._first_end(p[:k] + [nxt])  # where the target's own step ends, if in reach
            if end < k:  # inside the kept prefix: the step ends there
                k, head, ended = end + 1, p[: end + 1], True
            elif k >= budgets[i]:
                head, ended = p[:k], True
            else:
                head = p[:k] + [nxt]
                ended = end == k or len(head) >= budgets[i]
            forwards[i] += 1
            kept[i] = k
            heads[i] = head
            # The cache keeps the kept tokens; the newest token of the step is left pending, as after any step.
            self.cached.truncate(seqs[i], m - k + (1 if len(head) == k else 0))
            self.cached.append(seqs[i], head[-1:])
            s.own_unfed = 1
            s.usage.prefill_tokens -= m  # proposal tokens are checked, not input (their work is in flops)
            s.usage.decode_tokens += len(head)
            s.usage.paper_flops += self.cached.flops.weights(len(head))
            if not ended:
                open_rows.append(i)
        return sorted(open_rows)

    def _first_end(self, ids: list[int]) -> int:
        """Index of the first token of ``ids`` that ends a step (len(ids) if none does)."""
        b = self.boundary
        tok = torch.tensor(ids, device=b.contains.device)
        prev = torch.cat([torch.tensor([b.none], device=tok.device), tok[:-1]])
        step_end, _ = b.ends(prev, tok)
        hits = step_end.nonzero()
        return int(hits[0, 0]) if hits.numel() else len(ids)

    def rollback(self, seqs: list[int], n_tokens: list[int]) -> None:
        for s, n in zip(seqs, n_tokens):
            self.cached.truncate(s, n)

    def release(self, seqs: list[int]) -> None:
        for s in seqs:
            self.cached.release(s)
            self._partial_probs.pop(s, None)

    def usage(self, seq: int) -> ModelUsage:
        return self.cached.states[seq].usage

    def num_tokens(self, seq: int) -> int:
        return len(self.cached.states[seq].ids)
