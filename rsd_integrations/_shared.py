"""What both integrations share: one decoder per set of models, and a scheduler that batches calls.

Building a ``ChatRSD`` or ``RSDLLM`` is instant; the models load on first use and every instance that
names the same models shares them. Calls from many threads or coroutines (``batch``, concurrent
``ainvoke``) are collected for a few milliseconds and decoded as one batch on the models, not as
threads contending for them. Each call still gets its own events, in order, on its own queue, and
the caller dispatches them to its framework's callbacks in its own thread or event loop.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import queue
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rsd_core.config import RSDConfig
from rsd_core.constraints import Grammar
from rsd_core.decoder import RewardGuidedDecoder
from rsd_core.errors import InvalidPromptError, ModelRunError, PromptTooLongError
from rsd_core.events import RSDResult, SequenceError
from rsd_core.options import ModelSpec

T = TypeVar("T")

# Decoders loaded from a spec are shared by every client naming the same models (a load is expensive);
# ``close_decoder`` lets one go. Schedulers are keyed weakly: a decoder the caller built and dropped takes
# its scheduler thread with it.
_decoders: dict[ModelSpec, RewardGuidedDecoder] = {}
_schedulers: weakref.WeakKeyDictionary[RewardGuidedDecoder, BatchScheduler] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def close_decoder(dec: RewardGuidedDecoder) -> None:
    """Close ``dec`` (its scheduler thread stops) and forget it wherever it was shared."""
    with _lock:
        for spec in [k for k, v in _decoders.items() if v is dec]:
            del _decoders[spec]
    dec.close()


class ClosesItsDecoder:
    """``close()`` and ``with`` for a client: closing stops the decoder it runs on (its batching thread ends);
    a decoder shared with other clients naming the same models is closed for them too, and the next
    client loads it again."""

    def get_decoder(self) -> RewardGuidedDecoder:
        raise NotImplementedError

    def close(self) -> None:
        close_decoder(self.get_decoder())

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def get_decoder(spec: ModelSpec) -> RewardGuidedDecoder:
    """The decoder for these models, loaded on first use and shared afterwards."""
    spec = spec.canonical()
    with _lock:
        dec = _decoders.get(spec)
        if dec is not None and dec.closed:
            dec = None
        if dec is None:
            if (spec.target is None) != (spec.draft is None):
                raise ValueError("name both the target (model=) and the draft (draft_model=), or neither for the "
                                 f"embedded toy models; got target={spec.target!r}, draft={spec.draft!r}")
            dec = spec.load()
            _decoders[spec] = dec
        return dec


def get_scheduler(dec: RewardGuidedDecoder) -> BatchScheduler:
    """The one batching scheduler of ``dec``, started on first use; it lives as long as the decoder."""
    if dec.closed:
        raise RuntimeError("this RewardGuidedDecoder was closed; build another to run again")
    with _lock:
        sched = _schedulers.get(dec)
        if sched is None:
            sched = _schedulers[dec] = BatchScheduler(dec)
        return sched


def _retry_after(e: BaseException, attempt: int, max_retries: int) -> bool:
    """Whether a call that failed with ``e`` runs again: CUDA out-of-memory with retries left, the
    cache freed first."""
    import torch

    oom = isinstance(e, torch.OutOfMemoryError) or (isinstance(e, ModelRunError) and e.out_of_memory)
    if attempt == max_retries or not oom:
        return False
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return True


def with_retries(max_retries: int, call: Callable[[], T]) -> T:
    """``call()``, run again up to ``max_retries`` times while it fails with CUDA out-of-memory (the
    cache freed in between); any other error, or the last one, reaches the caller."""
    for attempt in range(max_retries + 1):
        try:
            return call()
        except Exception as e:
            if not _retry_after(e, attempt, max_retries):
                raise
    raise AssertionError("unreachable")


async def awith_retries(max_retries: int, call: Callable[[], Awaitable[T]]) -> T:
    """``with_retries`` for a coroutine: the loop is never blocked between attempts."""
    for attempt in range(max_retries + 1):
        try:
            return await call()
        except Exception as e:
            if not _retry_after(e, attempt, max_retries):
                raise
    raise AssertionError("unreachable")


def offered_tools(kwargs: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The tools a call offers (so calls in the output are parsed): none with ``tool_choice="none"``."""
    return (kwargs.get("tools") or None) if kwargs.get("tool_choice") != "none" else None


_END = object()


@dataclass
class Request:
    """One call's prompt and settings, and the queue its events come back on."""

    prompt: list[dict[str, Any]]
    config: RSDConfig
    tools: list[dict[str, Any]] | None = None
    stop: list[str] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    reply_prefix: str = ""  # forced start of the reply (tool_choice)
    grammar: Grammar | None = None  # what the whole reply must follow (a forced call's schema)
    cancelled: threading.Event = field(default_factory=threading.Event)
    timeout: float | None = None  # seconds the caller waits for the result; then TimeoutError, and the run stops

    def __post_init__(self) -> None:
        self._deadline = None if self.timeout is None else time.monotonic() + self.timeout
        self._q: queue.Queue[Any] | None = None if self.loop else queue.Queue()
        self._aq: asyncio.Queue[Any] | None = asyncio.Queue() if self.loop else None

    def group_key(self) -> str:
        return json.dumps([self.config.model_dump(), self.tools, self.stop, self.reply_prefix, repr(self.grammar)],
                          sort_keys=True, default=str)

    def put(self, item: Any) -> None:
        if self.loop is not None:
            try:
                self.loop.call_soon_threadsafe(self._aq.put_nowait, item)  # type: ignore[union-attr]
            except RuntimeError:  # the caller's loop is gone: nobody is listening
                self.cancelled.set()
        else:
            self._q.put(item)  # type: ignore[union-attr]

    def _left(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def _timed_out(self) -> TimeoutError:
        return TimeoutError(f"no result within timeout={self.timeout:g} s; the run was stopped (raise the "
                            "timeout for long answers)")

    def events(self) -> Iterator[Any]:
        """Events as they happen, ending with the ``RSDResult``; raises the run's error, if any."""
        try:
            while True:
                try:
                    item = self._q.get(timeout=self._left())  # type: ignore[union-attr]
                except queue.Empty:
                    raise self._timed_out() from None
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, RSDResult):
                    return
        finally:
            self.cancelled.set()

    async def aevents(self) -> AsyncIterator[Any]:
        try:
            while True:
                try:
                    item = await asyncio.wait_for(self._aq.get(), self._left())  # type: ignore[union-attr]
                except TimeoutError:
                    raise self._timed_out() from None
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, RSDResult):
                    return
        finally:
            self.cancelled.set()


_STOP = object()  # put in a scheduler's inbox when its decoder is closed or collected
_LIVE: weakref.WeakSet[BatchScheduler] = weakref.WeakSet()  # schedulers whose thread may still run


@atexit.register
def _stop_schedulers_at_exit(timeout_s: float = 5.0) -> None:
    """Let each scheduler thread finish the run it is in before the interpreter tears down.

    A caller gets its result while the thread is still closing that run (releasing the models' state); a
    daemon thread still inside torch when the process exits aborts it (``terminate called without an
    active exception``), after the program's output was written."""
    live = list(_LIVE)
    for sched in live:
        sched._inbox.put(_STOP)
    deadline = time.monotonic() + timeout_s
    for sched in live:
        sched._thread.join(max(0.0, deadline - time.monotonic()))


class BatchScheduler:
    """Runs requests on one decoder, batching those that arrive together with the same settings.

    It holds its decoder weakly: its thread ends when the decoder is closed or garbage-collected, so a
    service that builds and drops clients does not collect threads and models.
    """

    def __init__(self, decoder: RewardGuidedDecoder, max_batch: int = 64, gather_s: float = 0.005):
        self._decoder = weakref.ref(decoder)
        self.max_batch, self.gather_s = max_batch, gather_s
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._later: list[Any] = []  # taken from the inbox during a run, not for that run: served next
        stop = functools.partial(self._inbox.put, _STOP)
        weakref.finalize(decoder, stop)
        decoder.on_close(stop)
        self._thread = threading.Thread(target=self._loop, name="rsd-scheduler", daemon=True)
        self._thread.start()
        _LIVE.add(self)

    @property
    def decoder(self) -> RewardGuidedDecoder:
        dec = self._decoder()
        if dec is None or dec.closed:
            raise RuntimeError("this scheduler's RewardGuidedDecoder was closed or freed")
        return dec

    def submit(self, req: Request) -> Request:
        self._inbox.put(req)
        return req

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            pending, self._later = self._later or [self._inbox.get()], []
            try:
                while len(pending) < self.max_batch:
                    pending.append(self._inbox.get(timeout=self.gather_s))
            except queue.Empty:
                pass
            stopping = any(r is _STOP for r in pending)
            pending = [r for r in pending if r is not _STOP]
            if stopping:
                for r in pending:
                    r.put(RuntimeError("the RewardGuidedDecoder serving this request was closed"))
                break
            groups: dict[str, list[Request]] = {}
            for r in pending:
                if not r.cancelled.is_set():
                    groups.setdefault(r.group_key(), []).append(r)
            for reqs in groups.values():
                self._run(reqs)

    def _run(self, reqs: list[Request]) -> None:
        route = _Route(reqs)
        head = reqs[0]
        try:
            dec = self.decoder  # held for the run
            dec.generate([r.prompt for r in reqs], config=head.config, callbacks=[route],
                         tools=head.tools, stop=head.stop, reply_prefix=head.reply_prefix,
                         grammar=head.grammar, arrivals=_Arrivals(self, reqs))
        except _AllCancelled:
            pass
        except (InvalidPromptError, PromptTooLongError) as e:
            if len(reqs) == 1:  # checked before any model work: one bad prompt must not fail the others
                reqs[0].put(e)
            else:
                for r in reqs:
                    self._run([r])
        except BaseException as e:  # every caller still waiting hears of it; the scheduler lives on
            for i, r in enumerate(reqs):
                if i not in route.done:
                    r.put(e)


class _Arrivals:
    """Requests that arrive while a batch runs and share its settings join it (``Arrivals``); the
    others wait for the next batch."""

    def __init__(self, sched: BatchScheduler, reqs: list[Request]):
        self.sched, self.reqs, self.key = sched, reqs, reqs[0].group_key()
        self.ready: list[Request] = []

    def waiting(self) -> bool:
        while len(self.reqs) + len(self.ready) < self.sched.max_batch:
            try:
                r = self.sched._inbox.get_nowait()
            except queue.Empty:
                break
            closing = any(x is _STOP for x in self.sched._later)
            if r is not _STOP and r.cancelled.is_set():
                continue
            if r is not _STOP and not closing and r.group_key() == self.key:
                self.ready.append(r)
            else:
                self.sched._later.append(r)  # other settings, or the decoder closing: after this run
        return bool(self.ready)

    def take(self) -> list[Any]:
        joined, self.ready = self.ready, []
        self.reqs += joined  # their events route by index: numbered on after the batch's own
        return [r.prompt for r in joined]


class _Route:
    """A batch's events to the request each belongs to. A failure that was one sequence's own
    (``SequenceError``) goes to that request alone; the others carry on."""

    def __init__(self, reqs: list[Request]):
        self.reqs, self.done = reqs, set[int]()

    def _put(self, idx: int, item: Any) -> None:
        if not self.reqs[idx].cancelled.is_set():
            self.reqs[idx].put(item)
        elif all(r.cancelled.is_set() for r in self.reqs):
            raise _AllCancelled  # nobody is listening: stop decoding, free the caches

    def on_step(self, event: Any) -> None:
        self._put(event.sequence_index, event)

    on_target_invocation = on_step

    def on_end(self, result: RSDResult) -> None:
        self.done.add(result.index)
        self._put(result.index, result)

    def on_error(self, event: SequenceError) -> None:
        self.done.add(event.sequence_index)
        self._put(event.sequence_index, event.error)


class _AllCancelled(Exception):
    pass
