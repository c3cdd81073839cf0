"""The transformers scorer every local PRM family shares: a cached prefix per sequence, one step read at a time.

A family gives a ``PRMFormat`` (its input layout and where its score is read, ``rewards/format.py``)
and a loaded model. Scoring appends ``step_ids + query_ids`` to each sequence and runs one batched
forward over just those tokens (the prefix stays in the model's KV cache); ``rollback`` drops the
newest step's cache entries. ``score_solution`` scores a whole solution from scratch, with no cache:
the reference that incremental scoring must match.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM

from rsd_core.accounting import ModelUsage
from rsd_core.rewards.base import Conversation, RewardModel
from rsd_core.rewards.format import PRMFormat
from rsd_core.runtime.loading import load_pretrained, pop_load_kwargs
from rsd_core.runtime.native_engine import scorer_cache


class IncrementalPRM(RewardModel):
    """A PRM family's format run on a local transformers model.

    Example:
        >>> rm = StepTagPRM.from_pretrained("Qwen/Qwen2.5-Math-PRM-7B")   # doctest: +SKIP
        >>> rm.start(0, [{"role": "user", "content": "1 + 1?"}])            # doctest: +SKIP
        >>> rm.score([0], ["1 + 1 = 2\\n\\n"])                              # doctest: +SKIP
        [0.97]
    """

    format_class: type[PRMFormat]  # the family's format; its options are ``from_pretrained``'s keywords
    auto_class: Any = AutoModelForCausalLM  # how the family's checkpoints load

    def __init__(self, fmt: PRMFormat, model: Any, name: str | None = None):
        self.format, self.model, self.tokenizer = fmt, model, fmt.tokenizer
        self.name = str(name or getattr(model, "name_or_path", type(self).__name__))
        pad = getattr(self.tokenizer, "pad_token_id", None)
        pad = pad if pad is not None else getattr(self.tokenizer, "eos_token_id", None)
        self.cached = scorer_cache(model, pad or 0, keep_last_logits_only=True)
        self._conv: dict[int, Conversation] = {}
        self._steps: dict[int, list[str]] = {}
        self._lens: dict[int, list[int]] = {}

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> Any:
        """Load the family's checkpoint (hub id or local path); other keywords are the format's options."""
        load_kw = pop_load_kwargs(kwargs)
        model, tok = load_pretrained(cls.auto_class, name_or_path, **load_kw)
        return cls(cls.format_class(tok, **kwargs), model, name=name_or_path)

    def start(self, seq: int, conversation: Conversation) -> None:
        self.cached.new(seq, self.format.header_ids(conversation))
        self._conv[seq], self._steps[seq], self._lens[seq] = conversation, [], []

    @torch.inference_mode()
    def score(self, seqs: list[int], steps: list[str]) -> list[float]:
        if not seqs:
            return []
        queries = []
        before = self.cached.lengths(seqs), [len(self._steps[s]) for s in seqs]
        try:
            for s, text in zip(seqs, steps):
                conv, previous = self._conv[s], self._steps[s]
                ids = self.format.step_ids(conv, previous, text)
                q = self.format.query_ids(conv, previous, text)
                self.cached.append(s, ids + q)
                self.cached.count_scored(s, len(ids))
                previous.append(text)
                self._lens[s].append(len(ids))
                queries.append(len(q))
            logits, _, _ = self.cached.run(seqs)
            rewards = self.format.reward_from(logits.float()).clamp(0.0, 1.0).tolist()
        except BaseException:  # all or nothing: no sequence keeps half a step
            self.cached.cut_to(seqs, before[0])
            for s, n in zip(seqs, before[1]):
                del self._steps[s][n:], self._lens[s][n:]
            raise
        for s, nq in zip(seqs, queries):
            self.cached.truncate(s, nq)  # the question about the step is not part of the prefix
        return [float(r) for r in rewards]

    def rollback(self, seqs: list[int]) -> None:
        for s in seqs:
            self.cached.truncate(s, self._lens[s].pop())
            self._steps[s].pop()

    def release(self, seqs: list[int]) -> None:
        for s in seqs:
            self.cached.release(s)
            self._conv.pop(s, None)
            self._steps.pop(s, None)
            self._lens.pop(s, None)

    def usage(self, seq: int) -> ModelUsage:
        return self.cached.states[seq].usage

    @torch.inference_mode()
    def score_solution(self, conversation: Conversation, steps: list[str]) -> list[float]:
        """Every step's reward, each from one uncached forward over everything before it."""
        out = []
        ids = self.format.header_ids(conversation)
        dev = self.cached.device
        for i, step in enumerate(steps):
            ids = ids + self.format.step_ids(conversation, steps[:i], step)
            full = ids + self.format.query_ids(conversation, steps[:i], step)
            logits = self.model(input_ids=torch.tensor([full], device=dev)).logits
            logits = logits[:, -1] if logits.dim() == 3 else logits
            out.append(float(self.format.reward_from(logits.float()).clamp(0.0, 1.0)[0]))
        return out
