"""Likelihood PRMs: a causal LM trained on solutions judges a step by how surely it would write it.

The reward of a step is the smallest probability the model gives any of the step's tokens (or their
geometric mean), each token conditioned on the question and everything before it. A step with one
slipped digit gets the model's small probability for that digit. This is the toy PRM's family (a
small LM trained on the toy task); any causal LM can serve (``reward_type="likelihood"``).

The prefix stays in the model's cache, and the distribution after the prefix is kept per sequence,
so each step costs one forward over its own tokens.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from transformers import AutoModelForCausalLM

from rsd_core.accounting import ModelUsage
from rsd_core.rewards.base import Conversation, RewardModel, question_of
from rsd_core.runtime.loading import load_pretrained, pop_load_kwargs
from rsd_core.runtime.native_engine import scorer_cache


class LikelihoodFormat:
    """The chat-formatted question, then the steps as written; the reward aggregates the step's token log-probs."""

    def __init__(self, tokenizer: Any, aggregate: Literal["min", "geomean"] = "min"):
        if aggregate not in ("min", "geomean"):
            raise ValueError(f"aggregate must be 'min' or 'geomean', got {aggregate!r}")
        self.tokenizer, self.aggregate = tokenizer, aggregate

    def header_ids(self, conversation: Conversation) -> list[int]:
        msgs = [{"role": "user", "content": question_of(conversation)}]
        text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def step_ids(self, step: str) -> list[int]:
        return list(self.tokenizer(step, add_special_tokens=False).input_ids)

    def reward(self, logp: torch.Tensor) -> float:
        """The reward from the log-probabilities of a step's tokens."""
        if logp.numel() == 0:
            return 1.0
        return float(logp.min().exp() if self.aggregate == "min" else logp.mean().exp())


class LikelihoodPRM(RewardModel):
    def __init__(self, model: Any, tokenizer: Any, aggregate: Literal["min", "geomean"] = "min",
                 name: str | None = None):
        self.format = LikelihoodFormat(tokenizer, aggregate)
        self.model, self.tokenizer, self.aggregate = model, tokenizer, aggregate
        self.name = str(name or getattr(model, "name_or_path", "likelihood PRM"))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.cached = scorer_cache(model, pad or 0, keep_last_logits_only=False)
        self._last: dict[int, list[torch.Tensor]] = {}  # per sequence: log-probs after each prefix
        self._lens: dict[int, list[int]] = {}

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> LikelihoodPRM:
        load_kw = pop_load_kwargs(kwargs)
        model, tok = load_pretrained(AutoModelForCausalLM, name_or_path, **load_kw)
        declared = getattr(model.config, "rsd_reward", None) or {}
        if "aggregate" in declared and "aggregate" not in kwargs:
            kwargs["aggregate"] = declared["aggregate"]
        return cls(model, tok, name=name_or_path, **kwargs)

    def start(self, seq: int, conversation: Conversation) -> None:
        self.cached.new(seq, self.format.header_ids(conversation))
        self._last[seq], self._lens[seq] = [], []

    @torch.inference_mode()
    def score(self, seqs: list[int], steps: list[str]) -> list[float]:
        if not seqs:
            return []
        before = self.cached.lengths(seqs), [len(self._lens[s]) for s in seqs], [len(self._last[s]) for s in seqs]
        try:
            return self._score(seqs, steps)
        except BaseException:  # all or nothing: no sequence keeps half a step
            self.cached.cut_to(seqs, before[0])
            for s, n, m in zip(seqs, before[1], before[2]):
                del self._lens[s][n:], self._last[s][m:]
            raise

    def _score(self, seqs: list[int], steps: list[str]) -> list[float]:
        new = []
        for s, text in zip(seqs, steps):
            ids = self.format.step_ids(text)
            self.cached.append(s, ids)
            self.cached.count_scored(s, len(ids))
            self._lens[s].append(len(ids))
            new.append(ids)
        out = [self.format.reward(torch.empty(0))] * len(seqs)  # a step of no tokens has none found unlikely
        reading = [i for i, s in enumerate(seqs) if self.cached.states[s].pending]
        for i, s in enumerate(seqs):
            if i not in reading:  # nothing to read: the next step follows the same position
                self._last[s].append(self._last[s][-1])
        if not reading:
            return out
        logits, _, _ = self.cached.run([seqs[i] for i in reading], all_positions=True)  # [B, N, V], left-padded
        logp = torch.log_softmax(logits.float(), dim=-1)
        N = logp.shape[1]
        for row, i in enumerate(reading):
            s, ids = seqs[i], new[i]
            n = len(ids)
            if not self._last[s]:  # first step: the header was read in this chunk, just before the step
                self._last[s].append(logp[row, N - n - 1])
            if n == 0:  # an empty first step: only the header was read
                self._last[s].append(self._last[s][-1])
                continue
            # token j is predicted after token j-1; the first after whatever came before the step
            before = torch.cat([self._last[s][-1][None], logp[row, N - n: N - 1]])
            token_logp = before.gather(-1, torch.tensor(ids, device=logp.device)[:, None]).squeeze(-1)
            self._last[s].append(logp[row, -1])
            out[i] = self.format.reward(token_logp)
        return out

    def rollback(self, seqs: list[int]) -> None:
        for s in seqs:
            self.cached.truncate(s, self._lens[s].pop())
            self._last[s].pop()

    def release(self, seqs: list[int]) -> None:
        for s in seqs:
            self.cached.release(s)
            self._last.pop(s, None)
            self._lens.pop(s, None)

    def usage(self, seq: int) -> ModelUsage:
        return self.cached.states[seq].usage

    @torch.inference_mode()
    def score_solution(self, conversation: Conversation, steps: list[str]) -> list[float]:
        ids = self.format.header_ids(conversation)
        spans = []
        for st in steps:
            s_ids = self.format.step_ids(st)
            spans.append((len(ids), s_ids))
            ids = ids + s_ids
        logp = torch.log_softmax(self.model(input_ids=torch.tensor([ids], device=self.cached.device)).logits[0].float(), -1)
        out = []
        for start, s_ids in spans:
            t = torch.tensor(s_ids, device=logp.device)
            out.append(self.format.reward(logp[start - 1: start - 1 + len(s_ids)].gather(-1, t[:, None]).squeeze(-1)))
        return out
