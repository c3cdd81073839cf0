"""The native engine's decode loop with its state on the device: several tokens per launch, no waiting on the host.

On a GPU the host loop of ``native_engine.py`` costs more than the model: every token it launches each
layer's kernels one by one and waits for the sampled token to decide which rows go on. Here the loop's
state (each slot's token, position, step length, budget, whether it is still writing) lives in device
tensors, and one token is one body of device work (``_token``: the forward of every slot, sampling, the
step-end test, the bookkeeping). ``per_launch`` tokens are captured together as one CUDA graph and
replayed as one launch. After each launch the device copies one flag to pinned host memory (whether the
rows whose steps ended are reason to look: by default any one; ``early`` of the rows writing) and the
host polls that copy without blocking while up to ``ahead`` launches stay queued, so the device never
waits for the host between launches. The host looks at the tokens (one sync) when the flag is up or after
``window`` tokens: it hands the ended steps to the step hook, and restarts or drops those rows. A row whose
step ended idles (writing to the cache's scratch column) until that look: at batch 1 that is at most
``per_launch * ahead - 1`` tokens (on CPU, where each launch is done when it returns, ``per_launch - 1``).
On CUDA a look that finds rows still writing first launches once more (``overlap``), so the device writes
on while the host updates the ledgers and the hook scores, queues and restarts; when the hook stops every
row (new prompts, a flush to the target), that launch's tokens are undone: they lie past the ledgers.

The rows are the call's sequences, padded with idle rows to a power of two (so few shapes are captured),
each reading its own slot's K/V: as a view when they are slots 0.. in order, by index when they are a
few slots among many (a target rewriting two rejected steps among 128 sequences in flight reads two
slots, not 128); otherwise every slot of the cache is a row, in slot order. Greedy and seeded
sampling stay inside the graph (``sampling.Draws``), and so does keeping the distributions a sampled step
was drawn from (for the target's speculated rewrite of it); rows under a grammar take the host loop. Off CUDA the same bodies run eagerly (tests compare both loops token for token).

Example:
    >>> eng = NativeCachedModel(model, pad_id=0, device_loop=True)          # doctest: +SKIP
    >>> eng.new(0, prompt_ids)                                              # doctest: +SKIP
    >>> _, gens, eos = eng.run([0], budgets=[64], sampling=SamplingConfig(), boundary=boundary)  # doctest: +SKIP
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from rsd_core.config import SamplingConfig
from rsd_core.runtime.graphs import Graphs
from rsd_core.sampling import Draws, sample_next

if TYPE_CHECKING:
    from rsd_core.runtime.native_engine import NativeCachedModel, SlotSeq, StepHook

# logits -> each row's token (appending the distributions drawn from to the list, when kept)
Pick = Callable[[torch.Tensor, list[torch.Tensor]], torch.Tensor]

BUCKET = 256  # attention length granularity: one graph per bucket in use


class DeviceLoop:
    """Decode state and captured token bodies for one ``NativeCachedModel``."""

    def __init__(self, engine: NativeCachedModel, window: int = 8, graphs: bool | None = None,
                 compiled: bool = False, per_launch: int = 1, ahead: int = 2, early: float = 0.0,
                 overlap: bool | None = None):
        """``window``: most tokens between two host looks (rounded up to whole launches). ``per_launch``:
        tokens per launch (one captured graph). ``ahead``: launches queued before the host waits for the
        oldest one's flag (CUDA). ``early``: look as soon as this share of the rows writing have ended their
        step (0: the first. A look costs a sync and the host's work; an ended row waiting for one costs its
        share of the batch, and the batch's wall time when it is the longest row). ``overlap``: at a look
        with rows still writing, launch once more before the host's work on it (the ledgers, the step
        hook), so the device writes on meanwhile (default: on CUDA; a look that stops every row discards
        that launch's tokens). ``graphs``: capture the launches as CUDA graphs (default: on CUDA).
        ``compiled``: each token's body through ``torch.compile`` (fused kernels: fewer per layer, within
        the graph)."""
        if per_launch < 1 or ahead < 1 or not 0.0 <= early <= 1.0:
            raise ValueError(f"per_launch and ahead must be >= 1 and early in [0, 1]; got {per_launch}, {ahead}, "
                             f"{early}")
        self.eng = engine
        cuda = engine.device.type == "cuda"
        self.per_launch, self.ahead, self.early = per_launch, ahead, early
        self.overlap = cuda if overlap is None else overlap
        self._extra = False  # the last look launched once more (its tokens come at the next look)
        self.window = -(-max(1, window) // per_launch) * per_launch
        self._room = self.window + per_launch + 2  # tokens a row can write between looks, and slack
        self.looks = 0  # host looks at the device so far (each one sync)
        launches = self.window // per_launch + 1  # a window's, and the flag as a decode starts
        self._flags = torch.zeros(launches, dtype=torch.bool, pin_memory=cuda)
        self._events = [torch.cuda.Event() for _ in range(launches)] if cuda else []
        self.graphs = Graphs(cuda if graphs is None else graphs)
        # The whole token body (forward, sampling, bookkeeping) as one compiled graph. Shapes specialise
        # first and turn dynamic where they change (the attention length, by bucket): two compilations,
        # then none (shapes dynamic from the start ran 40% slower on CPU).
        self._step = torch.compile(self._token) if compiled else self._token
        self._slots = -1  # how many slots the state tensors were made for
        self.s: dict[str, torch.Tensor] = {}  # one entry per slot of the cache (the most rows a decode has)
        self.v: dict[str, torch.Tensor] = {}  # views of the first rows: the current decode's
        self.draws: Draws | None = None
        self.probs: torch.Tensor | None = None  # [slots, _room, vocab]: distributions since the last look, when kept
        self.gather = False  # the decode's rows read their slots' K/V by index (not slots 0.. in order)
        self.rows: list[int] = []  # the row of each of the decode's sequences

    # ------------------------------------------------------------------ state
    def _state(self) -> dict[str, torch.Tensor]:
        """The state tensors, one row per slot (remade when the cache gains slots); graphs captured
        against tensors the cache has since reallocated are dropped."""
        cache = self.eng.cache
        if cache.slots != self._slots:
            S, dev, long = cache.slots, self.eng.device, torch.long
            self.s = {name: torch.zeros(S, dtype=long, device=dev)
                      for name in ("tok", "prev", "pos", "n_gen", "budget", "m", "fed", "slot")}
            self.s.update({name: torch.zeros(S, dtype=torch.bool, device=dev) for name in ("live", "ended", "eos")})
            self.s["look"] = torch.zeros(1, dtype=torch.bool, device=dev)  # the host should look now
            self.s["out"] = torch.zeros(S, self._room, dtype=long, device=dev)  # tokens since the last look
            self.draws = Draws(torch.zeros(S, dtype=long, device=dev), torch.zeros(S, dtype=long, device=dev))
            self._slots = S
            self.graphs.forget(lambda key: False)
        gen = (cache.generation, self.eng.forward.cos.shape[0])
        self.graphs.forget(lambda key: key[0] == gen)  # type: ignore[index]
        return self.s

    # ------------------------------------------------------------------ device bodies
    def _record(self, logits: torch.Tensor, pick: Pick, boundary: Any) -> None:
        """Sample each live row's next token and note it: the step's length, its end, the window's tokens
        (and the distributions they were drawn from, when kept)."""
        s = self.v
        live = s["live"]
        drawn: list[torch.Tensor] = []
        tok = pick(logits, drawn)
        step_end, is_eos = boundary.ends(s["prev"], tok)
        at = s["m"].clamp(max=self._room - 1)  # idle rows write past their count
        s["out"].scatter_(1, at[:, None], tok[:, None])
        if drawn and self.probs is not None:
            V = drawn[0].shape[-1]
            self.probs[: at.shape[0], :, :V].scatter_(1, at[:, None, None].expand(-1, 1, V), drawn[0][:, None, :])
        s["m"].add_(live.long())
        s["n_gen"].add_(live.long())
        s["eos"].logical_or_(live & is_eos)
        done = live & (step_end | is_eos | (s["n_gen"] >= s["budget"]))
        s["ended"].logical_or_(done)
        s["prev"].copy_(torch.where(live, tok, s["prev"]))
        s["tok"].copy_(torch.where(live, tok, s["tok"]))
        s["live"].logical_and_(~done)
        # Worth a look: a row's step ended (by default), or ``early`` of the rows writing since the last look.
        ended = s["ended"].sum()
        s["look"].copy_(((ended > 0) & (ended >= self.early * (ended + s["live"].sum()))).view(1))

    def _token(self, L: int, pick: Pick, boundary: Any) -> torch.Tensor:
        """One token for every live row: read its newest token, then pick the next. Idle rows compute too
        (fixed shapes), at position 0, writing to their slot's scratch column."""
        s, cache = self.v, self.eng.cache
        live = s["live"]
        pos = torch.where(live, s["pos"], 0)
        cols = torch.where(live, s["pos"], cache.capacity)
        logits = self.eng.forward.decode_slots(s["tok"], pos, cols, L, cache, s["slot"] if self.gather else None)
        s["pos"].add_(live.long())
        s["fed"].add_(live.long())
        self._record(logits, pick, boundary)
        return s["tok"]

    # ------------------------------------------------------------------ the loop
    def decode(self, states: list[SlotSeq], logits: torch.Tensor, budgets: list[int], sampling: SamplingConfig,
               draws: Draws | None, boundary: Any, limit: int, first_prev: list[int] | None,
               on_step_end: StepHook | None, gens: list[list[int]], books: list[Any],
               probs_out: list[torch.Tensor | None] | None = None) -> list[bool]:
        """As ``NativeCachedModel.run``'s host loop, from the logits of the rows' pending tokens: fills
        ``gens`` (the tokens of each row's unfinished step; with ``on_step_end``, finished steps go to
        it), keeps each ledger up to date, and returns each row's end-of-sequence flag. ``probs_out``
        (sampling only): filled with the distributions of each row's unfinished step."""
        eng, cache = self.eng, self.eng.cache
        s = self._state()
        dev, S, B = eng.device, cache.slots, len(states)
        # The decode's rows. Slots 0..B-1 in order: the first rows, reading their slots as a view (idle
        # rows up to a power of two: fewer shapes to capture or compile). A few slots among many: the
        # same, each row reading its slot by index (a copy of its K/V, cheaper than reading every slot).
        # Otherwise every slot is a row, in slot order, as a view.
        slots = [st.slot for st in states]
        pow2 = min(S, 1 << (B - 1).bit_length())
        if slots == list(range(B)) or 3 * B < S:
            R, self.rows, self.gather = pow2, list(range(B)), slots != list(range(B))
        else:
            R, self.rows, self.gather = S, slots, False
        for t in s.values():
            t.zero_()
        self.v = v = {name: t if name == "look" else t[:R] for name, t in s.items()}
        rows = torch.tensor(self.rows, device=dev)
        v["slot"].fill_(slots[0])  # idle rows write to that slot's scratch column
        v["slot"][rows] = torch.tensor(slots, device=dev)
        v["live"][rows] = True
        v["budget"][rows] = torch.tensor(budgets, device=dev)
        v["n_gen"][rows] = torch.tensor([len(g) for g in gens], device=dev)  # a resumed step's tokens count
        v["prev"].fill_(boundary.none)
        if first_prev is not None:
            v["prev"][rows] = torch.tensor(first_prev, device=dev)
        v["pos"][rows] = torch.tensor([cache.lengths[slot] for slot in slots], device=dev)
        by_row = None
        if draws is not None and not sampling.greedy and self.draws is not None:
            by_row = Draws(self.draws.keys[:R], self.draws.counts[:R])
            by_row.keys[rows] = draws.keys
            by_row.counts[rows] = draws.counts

        keep = probs_out is not None and not sampling.greedy
        if keep and (self.probs is None or self.probs.shape[0] != S or self.probs.shape[2] < limit):
            self.probs = torch.zeros(S, self._room, limit, device=dev)
            self.graphs.forget(lambda key: False)
        row_probs: list[list[torch.Tensor]] = [[] for _ in states]

        def pick(lg: torch.Tensor, drawn: list[torch.Tensor]) -> torch.Tensor:
            tok = sample_next(lg[:, :limit], sampling, by_row, drawn if keep else None)
            if by_row is not None:
                by_row.advance(v["live"])
            return tok

        full = logits.new_zeros((R, logits.shape[-1]))
        full[rows] = logits
        self._record(full, pick, boundary)  # the first token, from the pending tokens' logits
        eos = [False] * len(states)
        writing = set(range(len(states)))
        # The boundary itself, not its id: the key keeps alive the tables a captured graph reads.
        mode = (limit, boundary, sampling.temperature, sampling.top_p, sampling.top_k, by_row is not None, keep)
        # Overlapping a look with one more launch needs the window's kept distributions copied first: not
        # worth it for the sampled steps whose distributions are kept.
        overlap = self.overlap and not keep
        first, self._extra = True, False
        while writing:
            # Room for one more window in every writing slot (budgets keep rows inside max_len), and for the
            # launches around it that overlap the looks, then launches until the device flags a look or the
            # window is full; then the look.
            top = max(cache.lengths[states[i].slot] for i in writing) + self.window + 2 * self.per_launch + 1
            cache.reserve(min(top, cache.max_len))
            L = min(cache.capacity, -(-top // BUCKET) * BUCKET)
            eng.forward.rope_upto(L)
            s = self._state()
            key = ((cache.generation, eng.forward.cos.shape[0]), S, R, self.gather, L, mode)
            state = [*s.values(), *([by_row.counts] if by_row is not None else []),
                     *([self.probs] if keep and self.probs is not None else [])]
            launch = lambda: self._launch(L, pick, boundary)  # noqa: E731
            self._launch_window(key, launch, state, flagged_first=first or self._extra)
            first = False
            extra = (lambda: self._run(key, launch, state)) if overlap else None
            if self._check(states, writing, gens, books, eos, on_step_end, boundary, row_probs if keep else None,
                           extra, by_row.counts if by_row is not None else None):
                break
        if by_row is not None and draws is not None:
            draws.counts.copy_(by_row.counts[rows])
        if probs_out is not None:
            probs_out[:] = [torch.cat(p) if p else None for p in row_probs]
        return eos

    def _launch(self, L: int, pick: Pick, boundary: Any) -> None:
        for _ in range(self.per_launch):
            self._step(L, pick, boundary)

    def _run(self, key: Any, launch: Callable[[], None], state: list[torch.Tensor]) -> None:
        self.graphs.run(key, launch, state=state)
        self.eng.forwards += self.per_launch
        self.eng.rows_computed += self.per_launch * self.v["live"].shape[0]

    def _launch_window(self, key: Any, launch: Callable[[], None], state: list[torch.Tensor],
                       flagged_first: bool = False) -> None:
        """Launch until the device flags a look (or the window is full). On CUDA each launch's flag is
        copied to pinned memory behind it and polled without blocking while ``ahead`` launches stay queued;
        elsewhere a launch is done when it returns, so its flag is read at once. ``flagged_first``: the
        flag may already be up (the first token of a decode ended its step) before any launch."""
        queued: deque[int] = deque()
        flag = self.s["look"]
        for j in range(self.window // self.per_launch + 1):
            if j > 0:
                self._run(key, launch, state)
            elif not flagged_first:
                continue
            if not self._events:
                if bool(flag):
                    return
                continue
            self._flags[j:j + 1].copy_(flag, non_blocking=True)
            self._events[j].record()
            queued.append(j)
            while queued and (len(queued) >= self.ahead or self._events[queued[0]].query()):
                oldest = queued.popleft()
                self._events[oldest].synchronize()
                if self._flags[oldest]:
                    return

    def _check(self, states: list[SlotSeq], writing: set[int], gens: list[list[int]], books: list[Any],
               eos: list[bool], on_step_end: StepHook | None, boundary: Any,
               row_probs: list[list[torch.Tensor]] | None, extra: Callable[[], None] | None = None,
               counts: torch.Tensor | None = None) -> bool:
        """The host's look at the device: each row's tokens since the last look go to its ledger; the rows
        whose step ended go to the hook, which says who writes on. True: every row stops where it is.
        ``extra``: one more launch, made (when a row is still writing) once the look has its copy, so the
        device works while the host does; a stop discards its tokens (they are past the ledgers) and puts
        back the random streams' ``counts``."""
        s, cache, dev = self.v, self.eng.cache, self.eng.device
        self.looks += 1
        # One copy to the host (one sync): each row's count, fed tokens, ended, EOS and live flags, then its
        # tokens; the device's counts then start again for the next look.
        flags = torch.stack([s["m"], s["fed"], s["ended"].long(), s["eos"].long(), s["live"].long()], 1)
        seen = torch.cat([flags, s["out"]], 1)
        saved = counts.clone() if extra is not None and counts is not None else None
        rows_seen = seen.tolist()
        for name in ("m", "fed", "ended", "look"):
            s[name].zero_()
        self._extra = extra is not None and any(row[4] for row in rows_seen)
        if self._extra:
            assert extra is not None
            extra()
        m, fed, ended, at_eos = (list(col) for col in zip(*(row[:4] for row in rows_seen)))
        out = [row[5:] for row in rows_seen]
        finished: list[tuple[int, list[int], bool, torch.Tensor | None]] = []
        for i in sorted(writing):
            st, r = states[i], self.rows[i]
            new = out[r][: m[r]]
            gens[i].extend(new)
            st.ids.extend(new)
            cache.lengths[st.slot] += fed[r]
            st.n_cached += fed[r]
            st.own_unfed = 1 if st.n_cached < len(st.ids) else 0
            books[i].generated += len(new)
            books[i].fed += fed[r]
            if row_probs is not None and self.probs is not None and new:  # copied: the buffer is rewritten
                row_probs[i].append(self.probs[r, : len(new), : self.probs.shape[2]].clone())
            self.eng.forward_rows += fed[r]
            eos[i] = eos[i] or bool(at_eos[r])
            if ended[r]:
                writing.discard(i)
                if on_step_end is not None:
                    books[i].settle(st, self.eng.flops)
                    probs = None
                    if row_probs is not None and row_probs[i]:
                        probs, row_probs[i] = torch.cat(row_probs[i]), []
                    finished.append((i, gens[i], bool(at_eos[r]), probs))
        if not finished:
            return False
        assert on_step_end is not None
        nexts = on_step_end(finished)
        for i, _, _, _ in finished:
            gens[i] = []
        if any(n < 0 for n in nexts):  # rows mid-step stop where they are (their tokens are in the ledger)
            s["live"].zero_()
            if self._extra and saved is not None and counts is not None:  # its draws are undone with it
                counts.copy_(saved)
            return True
        fresh = [(i, n) for (i, _, at_end, _), n in zip(finished, nexts) if n > 0 and not at_end]
        if fresh:  # they write their next step from where their ledger stands
            rows = [states[i] for i, _ in fresh]
            if any(len(st.pending) != 1 for st in rows):
                raise RuntimeError("internal: a row goes on with other than its own newest token pending")
            # One copy to the device: each row's index, newest token, position and budget.
            start = torch.tensor([[self.rows[i], st.ids[-1], cache.lengths[st.slot], n]
                                  for (i, n), st in zip(fresh, rows)], device=dev)
            idx = start[:, 0]
            s["tok"][idx], s["pos"][idx], s["budget"][idx] = start[:, 1], start[:, 2], start[:, 3]
            s["prev"][idx] = boundary.none  # a new step starts: no delimiter straddles into it
            s["n_gen"][idx] = 0
            s["eos"][idx] = False
            s["live"][idx] = True
            writing.update(i for i, _ in fresh)
        return False
