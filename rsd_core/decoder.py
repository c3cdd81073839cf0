"""Reward-guided speculative decoding (Liao et al. 2025), one reasoning step at a time.

For every unfinished sequence, each round:

1. the draft proposes the next step from the prompt and the accepted steps;
2. the PRM scores that step in context (a reward r in [0, 1]);
3. the step is kept with probability ω(r) (by default 1[r >= δ]);
4. a rejected step is thrown away and the target writes that step instead, from the same prefix;

until end-of-sequence, a stop string, or a budget. Every model keeps its own cache per sequence: the
draft rolls a rejected step back by dropping cache entries, the target reads the draft's accepted
steps only when it is next called, and the PRM reads each step once.

Example:
    >>> dec = RewardGuidedDecoder.from_pretrained()      # the embedded toy trio, on CPU
    >>> res = dec.generate(["Ann has 12 apples. She buys 5 more. How many apples does Ann have now?"])
    >>> res[0].text.endswith("\\\\boxed{17}.")  # doctest: +SKIP
    True
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from rsd_core.accounting import GenerationStats
from rsd_core.backends.base import Generator, Prompt, Step
from rsd_core.config import RSDConfig
from rsd_core.constraints import Grammar
from rsd_core.errors import InvalidPromptError, ModelRunError, PromptTooLongError, RewardValueError, RSDError
from rsd_core.events import (
    FinishReason,
    RSDResult,
    SequenceError,
    StepEvent,
    TargetInvocationEvent,
    dispatch,
)
from rsd_core.messages import check_text, validate_messages
from rsd_core.rewards import RewardModel, load_reward_model
from rsd_core.rewards.base import checked_rewards
from rsd_core.sampling import stream_key
from rsd_core.tool_format import ToolCallFormat, tool_format_for
from rsd_core.weighting import Weighting

Mode = Literal["rsd", "draft", "target"]


@dataclass
class _Seq:
    """One prompt's progress through a run."""

    index: int
    id: int  # key of this sequence in every model's state (unique per decoder)
    conversation: list[dict[str, Any]]
    n_prompt_tokens: int
    steps: list[StepEvent] = field(default_factory=list)
    text: str = ""
    n_steps: int = 0
    n_tokens: int = 0
    target_lag: int = 0  # accepted draft tokens the target has not read yet
    unscored: str = ""  # forced reply text the PRM reads with the first step it scores
    cursor: Any = None  # where ``text`` stands in the run's grammar (read up to ``cursor_at`` characters)
    cursor_at: int = 0
    stats: GenerationStats = field(default_factory=GenerationStats)
    finish: FinishReason | Literal["error"] | None = None
    error: BaseException | None = None  # what ended it without a result (``finish`` is then "error")
    rng: random.Random = field(default_factory=random.Random)  # its accept / reject draws


@runtime_checkable
class Arrivals(Protocol):
    """Prompts that join a running ``generate`` call (a service's requests arriving while it runs).

    ``waiting()`` is asked between steps (it must be cheap); when it is true the batch pauses at the
    next step end and ``take()``'s prompts join it, numbered on from the call's own prompts. A joined
    prompt that is not valid gets an ``on_error`` callback (``SequenceError``) and the others go on."""

    def waiting(self) -> bool: ...

    def take(self) -> list[Prompt]: ...


StepsHook = Callable[[list[tuple[int, Step]]], list[int]]


def _stops_on_error(failed: list[BaseException]) -> Callable[[StepsHook], StepsHook]:
    """A ``generate_steps`` hook that, when it raises (a callback's error, a cancellation), keeps the
    error in ``failed`` and stops every row where it is; the run then raises it, unwrapped."""
    def wrap(hook: StepsHook) -> StepsHook:
        def guarded(ended: list[tuple[int, Step]]) -> list[int]:
            try:
                return hook(ended)
            except BaseException as e:
                failed.append(e)
                return [-1] * len(ended)
        return guarded
    return wrap


@dataclass(frozen=True)
class RunSpec:
    """What one ``generate`` call asks for, besides its prompts (see ``generate``'s arguments)."""

    config: RSDConfig
    callbacks: tuple[Any, ...] = ()
    tools: list[dict[str, Any]] | None = None
    stop: tuple[str, ...] = ()
    reply_prefix: str = ""
    grammar: Grammar | None = None
    score_every_step: bool = False
    arrivals: Arrivals | None = None


class _Serialized:
    """Callbacks called from many threads, one event at a time."""

    def __init__(self, callbacks: list[Any]):
        self.callbacks, self.lock = callbacks, threading.Lock()

    def _send(self, method: str, event: Any) -> None:
        with self.lock:
            dispatch(self.callbacks, method, event)

    def on_step(self, event: StepEvent) -> None:
        self._send("on_step", event)

    def on_target_invocation(self, event: TargetInvocationEvent) -> None:
        self._send("on_target_invocation", event)

    def on_end(self, result: RSDResult) -> None:
        self._send("on_end", result)


def _conversation(prompt: Prompt) -> list[dict[str, Any]]:
    if isinstance(prompt, str):
        if not prompt:
            raise InvalidPromptError("the prompt is an empty string")
        return [{"role": "user", "content": check_text(prompt, "the prompt")}]
    return validate_messages(prompt)


def same_tokenizer(a: Any, b: Any) -> bool:
    """True when token ids can be handed over as they are."""
    if a is b:
        return True
    return len(a) == len(b) and a.get_vocab() == b.get_vocab()


class RewardGuidedDecoder:
    """Draft, target and PRM, and the RSD loop over them.

    Args:
        draft: the small model (a ``Generator``, e.g. ``HFGenerator``).
        target: the large model.
        reward: the PRM (a ``RewardModel``, a checkpoint id/path, or ``fn(question, steps, step)``).
            May be None only for draft-only or target-only runs.
        config: defaults for every run; ``generate(config=...)`` overrides per call.
        concurrency: None (local models): the prompts of a call advance together, one batched forward
            per model per round. A number (models behind servers): each prompt runs on its own, that
            many at a time, so one waiting for the target never holds the others back; the server
            batches what arrives together.
    """

    def __init__(self, draft: Generator, target: Generator, reward: RewardModel | str | Callable[..., float] | None,
                 config: RSDConfig | None = None, *, concurrency: int | None = None):
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"concurrency must be at least 1 (or None for batched rounds), got {concurrency}")
        self.draft = draft
        self.target = target
        self.reward = load_reward_model(reward) if reward is not None else None
        self.config = config or RSDConfig()
        self.concurrency = concurrency
        self.same_tokenizer = same_tokenizer(draft.tokenizer, target.tokenizer)
        self._ids = itertools.count()
        self._lock = threading.RLock()  # one run at a time per decoder: models and RNGs are shared
        self._close_hooks: list[Callable[[], None]] = []
        self.closed = False

    @property
    def tool_format(self) -> ToolCallFormat:
        """How the target writes tool calls (read from its chat template): tags, forced start, grammar, parser.

        Example:
            >>> plan = dec.tool_format.plan(tools, tool_choice="any")   # doctest: +SKIP
            >>> dec.generate([chat], tools=plan.tools, reply_prefix=plan.reply_prefix, grammar=plan.grammar)  # doctest: +SKIP
        """
        return tool_format_for(self.target.tokenizer)

    # ------------------------------------------------------------------ lifetime
    def on_close(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` when this decoder is closed (what serves it, such as an integration's batching thread)."""
        self._close_hooks.append(hook)

    def close(self) -> None:
        """Stop what serves this decoder and close its backends' connections; it cannot run afterwards.

        Dropping every reference to a decoder frees it too; ``close`` (or ``with``) does it at a known time.

        Example:
            >>> with RewardGuidedDecoder.from_pretrained() as dec:   # doctest: +SKIP
            ...     dec.generate(["Ann has 3 apples. She buys 2 more. How many now?"])
        """
        if self.closed:
            return
        self.closed = True
        hooks, self._close_hooks = self._close_hooks, []
        for hook in hooks:
            hook()
        for part in {id(p): p for p in (self.draft, self.target, self.reward) if p is not None}.values():
            close = getattr(part, "close", None)
            if callable(close):
                close()

    def __enter__(self) -> RewardGuidedDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        draft: str | None = None,
        target: str | None = None,
        reward: str | RewardModel | Callable[..., float] | None = None,
        *,
        config: RSDConfig | None = None,
        device_map: Any = None,
        dtype: Any = "auto",
        trust_remote_code: bool = False,
        reward_type: str | None = None,
        reward_options: dict[str, Any] | None = None,
        engine: Literal["auto", "native", "fast", "transformers"] = "auto",
    ) -> RewardGuidedDecoder:
        """Load the three models by hub id or local path, as transformers does.

        With nothing named, the embedded toy trio that ships in the package (CPU, no download).
        ``engine``: how draft and target decode (``HFGenerator``'s ``engine``; ``native`` runs RSD without
        lockstep rounds on a GPU too, where ``auto`` picks the CUDA-graph path).
        ``reward_options`` go to the reward family's format (``step_token="\n\n"`` for Skywork's PRM
        as the RSD paper ran it, ``system_prompt=...`` for a step-tag PRM; see docs/reward-models.md).
        """
        from rsd_core.backends.hf import HFGenerator
        from rsd_core.toy import toy_model_paths

        if draft is None and target is None and reward is None:
            paths = toy_model_paths()
            draft, target, reward = paths["draft"], paths["target"], paths["prm"]
        if draft is None or target is None:
            raise ValueError("name both draft= and target= (or neither, for the embedded toy models)")
        from rsd_core.runtime.checkpoints import canonical_name

        draft, target = canonical_name(draft), canonical_name(target)
        if isinstance(reward, str):
            reward = canonical_name(reward)
        kw = {"device_map": device_map, "dtype": dtype, "trust_remote_code": trust_remote_code}
        cfg = config or RSDConfig()
        d = HFGenerator.from_pretrained(draft, step_delimiters=cfg.step_delimiters, engine=engine, **kw)
        # The same checkpoint as draft and target is loaded once: two generators (two sets of caches), one model.
        t = HFGenerator(d.model, d.tokenizer, name=target, step_delimiters=cfg.step_delimiters, engine=engine) \
            if target == draft else HFGenerator.from_pretrained(target, step_delimiters=cfg.step_delimiters,
                                                                engine=engine, **kw)
        if reward_type == "llm_judge" and reward == target:  # the loaded target judges: no third model
            from rsd_core.rewards import JudgeFormat, LLMJudge

            r: RewardModel | None = LLMJudge(JudgeFormat(t.tokenizer, **(reward_options or {})), t.model,
                                             name=f"{target} (judge)")
        else:
            r = load_reward_model(reward, reward_type=reward_type, **kw, **(reward_options or {})) \
                if reward is not None else None
        return cls(d, t, r, cfg)

    @classmethod
    def from_vllm(
        cls,
        draft: Any,
        target: Any,
        reward: Any = None,
        *,
        config: RSDConfig | None = None,
        reward_type: str | None = None,
        concurrency: int = 16,
    ) -> RewardGuidedDecoder:
        """Drive models served by vLLM (``backends/vllm.py``): each of ``draft``, ``target`` and ``reward``
        is a ``ServedModel`` or a dict ``{"url": ..., "model": ...}``; ``reward`` may also be a
        ``RewardModel`` or a function. ``concurrency``: prompts in flight at once.

        Example:
            >>> dec = RewardGuidedDecoder.from_vllm(                                     # doctest: +SKIP
            ...     draft={"url": "http://127.0.0.1:8001", "model": "Qwen/Qwen2.5-Math-1.5B-Instruct"},
            ...     target={"url": "http://127.0.0.1:8002", "model": "Qwen/Qwen2.5-Math-7B-Instruct"},
            ...     reward={"url": "http://127.0.0.1:8003", "model": "Qwen/Qwen2.5-Math-PRM-7B"})
        """
        from rsd_core.backends.vllm import ServedModel, VLLMGenerator
        from rsd_core.rewards.vllm import VLLMRewardModel

        cfg = config or RSDConfig()
        d = VLLMGenerator(draft, step_delimiters=cfg.step_delimiters, pool=concurrency)
        t = VLLMGenerator(target, step_delimiters=cfg.step_delimiters, pool=concurrency)
        r: Any = reward
        if isinstance(reward, (ServedModel, dict)):
            r = VLLMRewardModel(reward, reward_type=reward_type, pool=concurrency)
        return cls(d, t, r, cfg, concurrency=concurrency)

    @classmethod
    def from_models(cls, draft_model: Any, draft_tokenizer: Any, target_model: Any, target_tokenizer: Any,
                    reward: RewardModel | Callable[..., float] | None = None,
                    config: RSDConfig | None = None) -> RewardGuidedDecoder:
        """Wrap already-loaded transformers models and tokenizers."""
        from rsd_core.backends.hf import HFGenerator

        cfg = config or RSDConfig()
        return cls(HFGenerator(draft_model, draft_tokenizer, step_delimiters=cfg.step_delimiters),
                   HFGenerator(target_model, target_tokenizer, step_delimiters=cfg.step_delimiters), reward, cfg)

    # ------------------------------------------------------------------ public API
    def generate(
        self,
        prompts: Sequence[Prompt] | Prompt,
        *,
        config: RSDConfig | None = None,
        callbacks: Iterable[Any] = (),
        tools: list[dict[str, Any]] | None = None,
        stop: list[str] | None = None,
        reply_prefix: str = "",
        grammar: Grammar | None = None,
        arrivals: Arrivals | None = None,
        score_every_step: bool = False,
    ) -> list[RSDResult]:
        """Run RSD over a batch of prompts (strings or chat message lists); one result per prompt.

        ``reply_prefix``: text every reply is forced to start with (``tool_choice`` opens a tool call
        this way). The models read it as part of the prompt, the PRM scores it with the first step,
        and each result's ``text`` starts with it; its tokens are not counted as generated.

        ``grammar``: a ``rsd_core.constraints.Grammar`` every reply (``reply_prefix`` included) must
        follow; draft and target alike write only tokens it allows, and end when it is complete
        (e.g. ``dec.tool_format.plan(tools, "any")``'s grammar, with its ``reply_prefix``: one call
        whose arguments fit the tool's schema).
        Local (transformers) models apply it; models behind vLLM servers ignore it.

        ``arrivals``: more prompts that join the batch while it runs, as slots free up (``Arrivals``);
        their results follow the given prompts' in the returned list, in the order they joined.

        ``score_every_step``: the PRM scores every step, also where nothing is decided (draft only or
        target only), so each ``StepEvent`` carries its reward (best-of-N and majority voting use this).
        """
        if stop is not None and (not isinstance(stop, list) or any(not isinstance(s, str) or not s for s in stop)):
            raise ValueError(f"stop must be a list of non-empty strings, got {stop!r}")
        if not isinstance(reply_prefix, str):
            raise ValueError(f"reply_prefix must be a string, got {type(reply_prefix).__name__}")
        if grammar is not None and grammar.after(reply_prefix) is None:
            raise ValueError(f"reply_prefix {reply_prefix!r} does not fit the grammar")
        spec = RunSpec(config or self.config, tuple(callbacks), tools, tuple(stop or ()), reply_prefix, grammar,
                       score_every_step, arrivals)
        return self._run(prompts, spec)

    def exclusive(self) -> Any:
        """Hold this decoder's models for direct use (no run starts meanwhile): ``with dec.exclusive(): ...``."""
        return self._lock

    def _run(self, prompts: Sequence[Prompt] | Prompt, spec: RunSpec) -> list[RSDResult]:
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], dict)):
            prompts = [prompts]  # a single prompt
        if not prompts:
            raise InvalidPromptError("no prompts given")
        cfg = spec.config
        weighting = Weighting.from_config(cfg)
        mode: Mode = "target" if weighting.always_rejects else "draft" if weighting.always_accepts else "rsd"
        if self.reward is None and (mode == "rsd" or spec.score_every_step):
            raise ValueError("this run needs a reward model (the threshold is strictly between 0 and 1, so rewards "
                             "decide): name one (reward= in RewardGuidedDecoder, reward_model= in ChatRSD and "
                             "RSDLLM, --reward in the rsd command), or use threshold 0 (draft only) or 1 "
                             "(target only)")
        if self.closed:
            raise RuntimeError("this RewardGuidedDecoder was closed; build another to run again")
        with self._lock:
            run = _Run(self, spec, weighting, mode)
            if self.concurrency is None:
                return run.execute(list(prompts))  # type: ignore[arg-type]
            return run.execute_each(list(prompts), self.concurrency)  # type: ignore[arg-type]


class _Run:
    """The state of one ``generate`` call."""

    def __init__(self, dec: RewardGuidedDecoder, spec: RunSpec, weighting: Weighting, mode: Mode):
        cfg, grammar, score_all = spec.config, spec.grammar, spec.score_every_step
        self.dec, self.spec, self.cfg, self.weighting, self.mode = dec, spec, cfg, weighting, mode
        self.reply_prefix, self.grammar, self.arrivals = spec.reply_prefix, grammar, spec.arrivals
        self.draft, self.target = dec.draft, dec.target
        self.reward: RewardModel = dec.reward  # type: ignore[assignment]  # not None whenever uses_reward
        self.callbacks, self.tools, self.stop, self.score_all = list(spec.callbacks), spec.tools, list(spec.stop), score_all
        self.uses_draft = mode != "target"
        self.uses_target = mode != "draft"
        self.uses_reward = mode == "rsd" or score_all
        # The target verifies a rejected step before rewriting it: same tokenizer (the ids mean the same),
        # no grammar (its rows pick tokens on the host), and a target that takes proposals.
        # Target only, with nothing to decide between steps but the budgets and stops: each sequence writes
        # its steps back to back, never waiting for the others' steps (``generate_steps``).
        self.continuous = (mode == "target" and not score_all and grammar is None and cfg.scheduler == "auto"
                           and callable(getattr(dec.target, "generate_steps", None)))
        # RSD without lockstep needs a draft that writes steps back to back in one batch (the native engine).
        self.scheduled = (mode == "rsd" and grammar is None and cfg.scheduler == "auto"
                          and bool(getattr(dec.draft, "steps_back_to_back", False)))
        self.speculates = (mode == "rsd" and cfg.speculative_rewrite and dec.same_tokenizer and grammar is None
                           and "proposals" in inspect.signature(dec.target.generate_step).parameters)
        self.streams: dict[int, int] = {}  # prompt index -> its sequence's random stream (seeded runs)
        self.seqs: list[_Seq] = []  # every sequence of the run, joined ones included
        self.t0 = time.perf_counter()

    def _streams(self, prompts: list[Prompt], indices: list[int]) -> None:
        """Each seeded sequence's stream key, from the seed and its prompt (and, for a prompt given more
        than once, which copy it is): the same text alone or among others, different for each copy."""
        if self.cfg.seed is None:
            return
        copies: dict[str, int] = {}
        for p, i in zip(prompts, indices):
            if i not in self.streams:
                what = json.dumps([_conversation(p), self.tools, self.reply_prefix], sort_keys=True, default=str)
                copies[what] = copies.get(what, -1) + 1
                self.streams[i] = stream_key(self.cfg.seed, what, copies[what])

    # ------------------------------------------------------------------ the loop
    def execute(self, prompts: list[Prompt], indices: list[int] | None = None) -> list[RSDResult]:
        self._configure()
        seqs = self.seqs = self._start(prompts, indices)
        self.next_index = max(s.index for s in seqs) + 1
        results: dict[int, RSDResult] = {}
        try:
            while True:
                self._join()
                if not (active := [s for s in seqs if s.finish is None]):
                    break
                if self.mode == "target" and self.continuous:
                    self._target_runs(active)
                elif self.mode == "target":
                    self._target_writes(active, reason="target_only")
                elif self.scheduled:
                    self._scheduled(active, results)
                else:
                    self._rsd_round(active)
                for s in active:
                    if s.finish is not None and s.error is None and s.index not in results:
                        results[s.index] = self._finish(s)
        finally:
            self._release(seqs)
        for s in seqs:  # the others have finished (their callbacks ran): the first failure is raised
            if s.error is not None:
                raise s.error
        return [results[s.index] for s in seqs]

    def execute_each(self, prompts: list[Prompt], concurrency: int) -> list[RSDResult]:
        """Every prompt as its own sequence of rounds, ``concurrency`` at a time (models behind servers).

        All prompts are rendered and checked first, so a bad one fails the call before any request.
        Callbacks are called one at a time. If some prompts fail, the others still finish (their
        callbacks ran) and the first error is raised. Prompts that arrive (``arrivals``) start as they
        come; one of them that fails gets an ``on_error`` callback instead.
        """
        for p in prompts:
            _conversation(p)
            for model, used in ((self.draft, self.uses_draft), (self.target, self.uses_target)):
                if used:
                    model.render_prompt(p, self.tools, self.reply_prefix)
        self.callbacks = [_Serialized(self.callbacks)]
        self._streams(prompts, list(range(len(prompts))))
        workers = concurrency if self.arrivals is not None else min(concurrency, len(prompts))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rsd-seq") as pool:
            futures = [pool.submit(self._one, p, i) for i, p in enumerate(prompts)]
            joined: list[Any] = []
            while self.arrivals is not None and not all(f.done() for f in futures + joined):
                if self.arrivals.waiting():
                    for p in self.arrivals.take():
                        joined.append(pool.submit(self._one_joined, p, len(prompts) + len(joined)))
                time.sleep(0.002)
            outcomes = [f.exception() or f.result() for f in futures]
            outcomes += [f.result() for f in joined if f.result() is not None]
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:
            raise errors[0]
        return outcomes  # type: ignore[return-value]

    def _arrived(self) -> bool:
        """Prompts wait to join: the batch pauses at the next step end to take them in."""
        return self.arrivals is not None and self.arrivals.waiting()

    def _join(self, *into: list[_Seq]) -> None:
        """Start the prompts that arrived; each joins ``self.seqs`` and the given lists."""
        if not self._arrived():
            return
        assert self.arrivals is not None
        for p in self.arrivals.take():
            index, self.next_index = self.next_index, self.next_index + 1
            try:
                new = self._start([p], [index])
            except (InvalidPromptError, PromptTooLongError, ValueError) as e:  # that prompt's own fault
                dispatch(self.callbacks, "on_error", SequenceError(index, e))
                continue
            for seqs in (self.seqs, *into):
                seqs += new

    def _one_joined(self, prompt: Prompt, index: int) -> RSDResult | None:
        try:
            self._streams([prompt], [index])
            return self._one(prompt, index)
        except Exception as e:  # that prompt's own failure: reported to it alone
            dispatch(self.callbacks, "on_error", SequenceError(index, e))
            return None

    def _one(self, prompt: Prompt, index: int) -> RSDResult:
        run = _Run(self.dec, dataclasses.replace(self.spec, callbacks=tuple(self.callbacks), arrivals=None),
                   self.weighting, self.mode)
        run.streams, run.t0 = self.streams, self.t0
        return run.execute([prompt], [index])[0]

    def _rsd_round(self, seqs: list[_Seq]) -> None:
        """One lockstep round: every sequence drafts a step, the PRM scores them together, the target
        rewrites the rejected ones. (``_scheduled`` runs the same decisions without the lockstep.)"""
        # 1. the draft proposes the next step of every sequence
        t = time.perf_counter()
        proposals = self._model("draft", self.draft.generate_step, [s.id for s in seqs],
                                [self._budget(s, self.draft) for s in seqs], **self._constraints(seqs))
        draft_s = time.perf_counter() - t
        # 2.-3. the PRM scores each proposal in context; each is kept with probability ω(r)
        rejected = self._judge(seqs, proposals, draft_s)
        # 4. a rejected step is thrown away; the target writes that step instead
        if rejected:
            self._throw_away(rejected)
            self._target_writes([s for s, _, _ in rejected], reason="rejected", rejected=rejected)

    def _judge(self, seqs: list[_Seq], proposals: list[Step], draft_s: float) -> list[tuple[_Seq, Step, float | None]]:
        """Score the draft's steps (one PRM call), keep each with probability ω(r), report them; returns
        the rejected ones."""
        rewards: list[Any] = [None] * len(seqs)
        reward_s = 0.0
        if self.uses_reward:
            t = time.perf_counter()
            rewards = self._score(seqs, [p.text for p in proposals])
            reward_s = time.perf_counter() - t
            if any(s.error for s in seqs):  # those sequences ended (``_fail``); the rest go on
                kept = [i for i, s in enumerate(seqs) if s.error is None]
                seqs, proposals, rewards = [seqs[i] for i in kept], [proposals[i] for i in kept], [rewards[i] for i in kept]
        if self.mode == "rsd":
            weights, keep = self.weighting.decide(rewards, [s.rng for s in seqs])
        else:
            weights, keep = [None] * len(seqs), [True] * len(seqs)  # type: ignore[list-item]
        latency = {"draft": draft_s, "reward": reward_s}
        rejected: list[tuple[_Seq, Step, float | None]] = []
        for s, step, r, w, k in zip(seqs, proposals, rewards, weights, keep):
            s.stats.draft_steps += 1
            event = StepEvent(sequence_index=s.index, step_index=s.n_steps, text=step.text,
                              num_tokens=len(step.token_ids), source="draft", reward=r, weight=w, accepted=k,
                              is_final=k and step.eos, latency_s=latency, token_ids=step.token_ids)
            s.steps.append(event)
            if k:
                s.stats.accepted_draft_steps += 1
                self._accept(s, step, r, source="draft")
            else:
                rejected.append((s, step, r))
            dispatch(self.callbacks, "on_step", event)
        return rejected

    def _throw_away(self, rejected: list[tuple[_Seq, Step, float | None]]) -> None:
        rs = [s for s, _, _ in rejected]
        self.draft.rollback([s.id for s in rs], [len(step.token_ids) for _, step, _ in rejected])
        self.reward.rollback([s.id for s in rs])

    def _scheduled(self, seqs: list[_Seq], results: dict[int, RSDResult]) -> None:
        """RSD without lockstep rounds. The draft writes every sequence's steps in one batched decode; a
        sequence whose step ends waits for its score while the others write on, and the PRM scores the
        waiting steps together (one call) once ``RSDConfig.score_batch`` wait or no sequence is left
        writing. An accepted sequence goes straight on drafting, a rejected one waits in the target's
        queue. The target runs its queue (one batch, each rewrite speculated from its rejected step) when
        ``target_batch`` steps wait or the oldest has waited ``target_wait_s``, or when no sequence is
        left drafting; the draft's batch is paused for it and picks up where each sequence stopped."""
        queue: list[tuple[_Seq, Step, float | None]] = []  # rejected steps waiting for the target
        held: list[tuple[_Seq, Step]] = []  # ended draft steps waiting to be scored together
        oldest = [0.0]  # when the oldest step in the queue was queued
        partial: dict[int, list[int]] = {}
        failed: list[BaseException] = []
        flush = [False]
        cfg = self.cfg

        def judge(ended: list[tuple[_Seq, Step]], draft_s: float) -> set[int]:
            """Score and decide the ended steps; the ids of the sequences that draft on."""
            rejected = self._judge([s for s, _ in ended], [st for _, st in ended], draft_s)
            if rejected:
                self._throw_away(rejected)
                if not queue:
                    oldest[0] = time.perf_counter()
                queue.extend(rejected)
            out = {id(s) for s, _, _ in rejected}
            for s, _ in ended:
                if s.finish is not None and s.error is None:
                    results[s.index] = self._finish(s)
            return {id(s) for s, _ in ended if s.finish is None and id(s) not in out}

        while True:
            self._join(seqs)
            if not (live := [s for s in seqs if s.finish is None]):
                break
            queued = {id(s) for s, _, _ in queue}
            drafting = [s for s in live if id(s) not in queued]
            if drafting:
                t0 = [time.perf_counter()]
                stopped: set[int] = set()  # rows of this decode that left its batch

                @_stops_on_error(failed)
                def on_steps(ended: list[tuple[int, Step]], drafting: list[_Seq] = drafting,
                             t0: list[float] = t0, stopped: set[int] = stopped) -> list[int]:
                    now = [(drafting[i], st) for i, st in ended]
                    held.extend(now)
                    writing = len(drafting) - len(stopped) - len(now)  # rows that write on regardless
                    if len(held) < cfg.score_batch and writing > 0:
                        stopped.update(id(s) for s, _ in now)
                        return [0] * len(now)  # they wait out of the batch for the group's score
                    waited = len(held) > len(now)
                    group, held[:] = list(held), []
                    going = judge(group, time.perf_counter() - t0[0])
                    t0[0] = time.perf_counter()
                    if waited and going - {id(s) for s, _ in now}:
                        return [-1] * len(now)  # sequences that left the batch go on: start it again
                    nexts = [self._budget(s, self.draft) if id(s) in going else 0 for s, _ in now]
                    stopped.update(id(s) for (s, _), n in zip(now, nexts) if n == 0)
                    full = cfg.target_batch is not None and len(queue) >= cfg.target_batch
                    late = cfg.target_wait_s is not None and t0[0] - oldest[0] >= cfg.target_wait_s
                    flush[0] = bool(queue) and (full or late)
                    return [-1] * len(nexts) if flush[0] or self._arrived() else nexts

                left = self._model("draft", self.draft.generate_steps, [s.id for s in drafting],  # type: ignore[attr-defined]
                                   [self._budget(s, self.draft) for s in drafting], on_steps,
                                   resume=[partial.pop(s.id, []) for s in drafting])
                if failed:
                    raise failed[0]
                for s, toks in zip(drafting, left):
                    if toks and s.finish is None:
                        partial[s.id] = toks
                if held:  # every row stopped with steps still unscored
                    group, held[:] = list(held), []
                    judge(group, time.perf_counter() - t0[0])
            queued = {id(s) for s, _, _ in queue}
            if queue and (flush[0] or all(id(s) in queued for s in seqs if s.finish is None)):
                flush[0] = False
                batch, queue[:] = list(queue), []
                self._target_writes([s for s, _, _ in batch], reason="rejected", rejected=batch)
                for s, _, _ in batch:
                    if s.finish is not None and s.error is None:
                        results[s.index] = self._finish(s)

    def _target_writes(self, seqs: list[_Seq], reason: Literal["rejected", "target_only"],
                       rejected: list[tuple[_Seq, Step, float | None]] | None = None) -> None:
        lags = [s.target_lag for s in seqs]
        kwargs = self._constraints(seqs)
        if rejected and self.speculates:
            # A sampled draft step is verified against the distributions it was drawn from; where the
            # draft kept none, the target writes from scratch.
            sampled = not self.cfg.draft_sampling.greedy
            kwargs["proposals"] = [None if sampled and step.probs is None else step for _, step, _ in rejected]
        t = time.perf_counter()
        steps = self._model("target", self.target.generate_step, [s.id for s in seqs],
                            [self._budget(s, self.target) for s in seqs], **kwargs)
        target_s = time.perf_counter() - t
        rewards: list[Any] = [None] * len(seqs)
        if self.uses_reward:
            # The PRM must read the target's step anyway to keep its prefix; its reward is reported.
            rewards = self._score(seqs, [st.text for st in steps])
        if self.uses_draft:
            live = [(s, st) for s, st in zip(seqs, steps) if not st.eos and s.error is None]
            self.draft.extend([s.id for s, _ in live], [self._handoff(st, self.draft) for _, st in live])
        for i, (s, step, r) in enumerate(zip(seqs, steps, rewards)):
            if s.error is None:
                self._target_step(s, step, r, reason, rejected[i] if rejected else None, lags[i], target_s)

    def _target_step(self, s: _Seq, step: Step, reward: float | None, reason: Literal["rejected", "target_only"],
                     rejected: tuple[_Seq, Step, float | None] | None, lag: int, target_s: float) -> None:
        s.target_lag = 0
        s.stats.target_invocations += 1
        s.stats.target_steps += 1
        if rejected:
            s.stats.rewritten_steps += 1
            s.stats.rewrite_forwards += step.forwards
            s.stats.speculated_tokens += step.speculated
        rej_text, rej_reward = (rejected[1].text, rejected[2]) if rejected else (None, None)
        dispatch(self.callbacks, "on_target_invocation", TargetInvocationEvent(
            sequence_index=s.index, step_index=s.n_steps, reason=reason, rejected_text=rej_text,
            rejected_reward=rej_reward, catch_up_tokens=lag, num_tokens=len(step.token_ids), latency_s=target_s,
            speculated_tokens=step.speculated))
        event = StepEvent(sequence_index=s.index, step_index=s.n_steps, text=step.text, num_tokens=len(step.token_ids),
                          source="target", reward=reward, weight=None, accepted=True, is_final=step.eos,
                          latency_s={"target": target_s}, token_ids=step.token_ids)
        s.steps.append(event)
        self._accept(s, step, reward, source="target")
        dispatch(self.callbacks, "on_step", event)

    def _target_runs(self, seqs: list[_Seq]) -> None:
        """Target only: every sequence writes step after step in one batch; each step's events go out
        the moment it ends, and a sequence leaves the batch when it finishes. Prompts that arrive
        join at the next step end."""
        partial: dict[int, list[int]] = {}
        failed: list[BaseException] = []
        while True:
            self._join(seqs)
            if not (live := [s for s in seqs if s.finish is None]):
                break
            last = [time.perf_counter()] * len(live)

            @_stops_on_error(failed)
            def on_steps(ended: list[tuple[int, Step]], live: list[_Seq] = live,
                         last: list[float] = last) -> list[int]:
                nexts = []
                for i, step in ended:
                    s = live[i]
                    now = time.perf_counter()
                    self._target_step(s, step, None, "target_only", None, s.target_lag, now - last[i])
                    last[i] = now
                    nexts.append(0 if s.finish is not None else self._budget(s, self.target))
                return [-1] * len(nexts) if self._arrived() else nexts

            left = self._model("target", self.target.generate_steps, [s.id for s in live],  # type: ignore[attr-defined]
                               [self._budget(s, self.target) for s in live], on_steps,
                               resume=[partial.pop(s.id, []) for s in live])
            if failed:
                raise failed[0]
            for s, toks in zip(live, left):
                if toks and s.finish is None:
                    partial[s.id] = toks

    # ------------------------------------------------------------------ bookkeeping
    def _score(self, seqs: list[_Seq], texts: list[str]) -> list[Any]:
        """The PRM's reward for each sequence's newest step, each checked to be a number in [0, 1].

        A failure that belongs to one sequence (a reward function raising on its text, a value out of
        range) ends that sequence alone (``_fail``, its reward None): a batch whose scoring fails is
        scored again one sequence at a time, and those that fail alone end while the others go on.
        Where it cannot be pinned on some of them (all fail alone, or none do) or the device ran out
        of memory, the batch's error is raised."""
        full = [s.unscored + t for s, t in zip(seqs, texts)]
        try:
            return self._rewards(seqs, full)
        except (ModelRunError, RewardValueError) as e:
            if getattr(e, "out_of_memory", False):
                raise
            if len(seqs) == 1:
                self._fail(seqs[0], e)
                return [None]
            error = e
        out: list[Any] = []
        alone: list[BaseException | None] = []
        for s, text in zip(seqs, full):
            try:
                out += self._rewards([s], [text])
                alone.append(None)
            except (ModelRunError, RewardValueError) as e:
                if getattr(e, "out_of_memory", False):
                    raise
                out.append(None)
                alone.append(e)
        if all(alone) or not any(alone):
            raise error
        for s, own in zip(seqs, alone):
            if own is not None:
                self._fail(s, own)
        return out

    def _rewards(self, seqs: list[_Seq], texts: list[str]) -> list[float]:
        ids = [s.id for s in seqs]
        values = self._model("reward", self.reward.score, ids, texts)
        try:
            return checked_rewards(values, len(seqs), f"reward model {getattr(self.reward, 'name', '?')!r}")
        except RewardValueError:
            self.reward.rollback(ids)  # score() kept every step
            raise

    def _fail(self, s: _Seq, error: BaseException) -> None:
        """End one sequence without a result; the run goes on with the others and raises ``error`` at its end."""
        s.finish, s.error = "error", error
        self._release([s])
        dispatch(self.callbacks, "on_error", SequenceError(s.index, error))

    def _model(self, role: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A model call; its failure becomes a ``ModelRunError`` naming the model (the run then releases
        its sequences, so the decoder stays usable)."""
        try:
            return fn(*args, **kwargs)
        except RSDError:
            raise
        except Exception as e:
            model = {"draft": self.draft, "target": self.target, "reward": self.reward}[role]
            raise ModelRunError.wrap(role, getattr(model, "name", type(model).__name__), e) from e

    def _configure(self) -> None:
        """Set each model up for this run (sampling, seeds, step delimiters)."""
        if self.uses_draft:
            self.draft.reseed(self.cfg.seed)
            self.draft.sampling = self.cfg.draft_sampling
            self.draft.set_step_delimiters(self.cfg.step_delimiters)
            if hasattr(self.draft, "keep_probs"):  # a sampled draft step is verified against what it was drawn from
                self.draft.keep_probs = self.speculates and not self.cfg.draft_sampling.greedy
        if self.uses_target:
            self.target.reseed(None if self.cfg.seed is None else self.cfg.seed + 1)
            self.target.sampling = self.cfg.target_sampling
            self.target.set_step_delimiters(self.cfg.step_delimiters)

    def _start(self, prompts: list[Prompt], indices: list[int] | None = None) -> list[_Seq]:
        # Render and check every prompt before any model work, so bad input leaves nothing behind.
        rendered = []
        for p in prompts:
            conv = _conversation(p)
            d_ids = self.draft.render_prompt(p, self.tools, self.reply_prefix) if self.uses_draft else None
            t_ids = self.target.render_prompt(p, self.tools, self.reply_prefix) if self.uses_target else None
            rendered.append((conv, d_ids, t_ids))
        indices = indices if indices is not None else list(range(len(prompts)))
        self._streams(prompts, indices)
        seqs = []
        for index, (conv, d_ids, t_ids) in zip(indices, rendered):
            key = self.streams.get(index)
            s = _Seq(index, next(self.dec._ids), conv, len(t_ids if t_ids is not None else d_ids or []),
                     text=self.reply_prefix, unscored=self.reply_prefix,
                     rng=random.Random(None if key is None else stream_key(key, "accept")))
            for role, model, ids in (("draft", self.draft, d_ids), ("target", self.target, t_ids)):
                if ids is not None:
                    model.start(s.id, ids)
                    set_stream = getattr(model, "set_stream", None)  # optional in the Generator contract
                    if key is not None and set_stream is not None:
                        set_stream(s.id, stream_key(key, role))
            if self.uses_reward:
                self.reward.start(s.id, conv)
            seqs.append(s)
        return seqs

    def _constraints(self, seqs: list[_Seq]) -> dict[str, Any]:
        """``generate_step``'s keyword for the grammar: where each reply stands in it (None: left it).
        Each sequence's cursor reads only the text added since the last round."""
        if self.grammar is None:
            return {}
        for s in seqs:
            if s.cursor is None and s.cursor_at == 0:
                s.cursor = self.grammar.cursor()
            if s.cursor is not None and len(s.text) > s.cursor_at:
                s.cursor = s.cursor.feed(s.text[s.cursor_at:].encode())
            s.cursor_at = len(s.text)
        return {"constraints": [s.cursor for s in seqs]}

    def _budget(self, s: _Seq, model: Generator) -> int:
        room = model.context_length - model.num_tokens(s.id)
        return max(1, min(self.cfg.max_step_tokens, self.cfg.max_new_tokens - s.n_tokens, room))

    def _handoff(self, step: Step, dst: Generator) -> list[int]:
        """Same tokenizer: the ids as they are. Otherwise: re-tokenize only this step's text."""
        return step.token_ids if self.dec.same_tokenizer else dst.encode_text(step.text)

    def _accept(self, s: _Seq, step: Step, reward: float | None, source: str) -> None:
        s.unscored = ""
        s.n_steps += 1
        s.n_tokens += len(step.token_ids)
        prev_len = len(s.text)
        s.text += step.text
        if source == "draft" and self.uses_target and not step.eos:
            handed = self._handoff(step, self.target)
            self.target.extend([s.id], [handed])
            s.target_lag += len(handed)
        if step.eos:
            s.finish = "eos"
        elif self._apply_stop(s, prev_len):
            s.finish = "stop"
        elif s.n_tokens >= self.cfg.max_new_tokens or self._out_of_context(s):
            s.finish = "max_new_tokens"
        elif s.n_steps >= self.cfg.max_steps:
            s.finish = "max_steps"

    def _out_of_context(self, s: _Seq) -> bool:
        models = ([self.draft] if self.uses_draft else []) + ([self.target] if self.uses_target else [])
        return any(m.num_tokens(s.id) >= m.context_length for m in models)

    def _apply_stop(self, s: _Seq, prev_len: int) -> bool:
        """Cut the text at the first stop string that the new step completed (the stop itself excluded)."""
        cut = None
        for stop in self.stop:
            pos = s.text.find(stop, max(0, prev_len - len(stop) + 1))
            if pos != -1 and (cut is None or pos < cut):
                cut = pos
        if cut is None:
            return False
        s.text = s.text[:cut]
        return True

    def _finish(self, s: _Seq) -> RSDResult:
        for name, model, used in (("draft", self.draft, self.uses_draft), ("target", self.target, self.uses_target),
                                  ("reward", self.reward, self.uses_reward)):
            if used and model is not None:
                getattr(s.stats, name).add(model.usage(s.id))
        s.stats.wall_time_s = time.perf_counter() - self.t0
        self._release([s])
        finish: FinishReason = "eos" if s.finish in (None, "error") else s.finish  # type: ignore[assignment]
        result = RSDResult(index=s.index, text=s.text, steps=s.steps, stats=s.stats, finish_reason=finish,
                           num_prompt_tokens=s.n_prompt_tokens, num_output_tokens=s.n_tokens)
        dispatch(self.callbacks, "on_end", result)
        return result

    def _release(self, seqs: list[_Seq]) -> None:
        ids = [s.id for s in seqs]
        for model, used in ((self.draft, self.uses_draft), (self.target, self.uses_target),
                            (self.reward, self.uses_reward)):
            if used and model is not None:
                model.release(ids)
