"""What every transformers-based PRM family shares: a cached prefix per sequence, one step read at a time.

A family says only how its input is laid out and where its score is read:

- ``header_ids(conversation)``: the tokens before the first step (the question, in the family's format);
- ``step_ids(step, index)``: the tokens a step adds to the prefix (the step, its tag or separator);
- ``query_ids(step)``: tokens read after the step only to ask for its score, then dropped (LLM-as-judge);
- ``reward_from(logits)``: the reward, from the model's output at the last position.

Scoring appends ``step_ids + query_ids`` to each sequence and runs one batched forward over just
those tokens (the prefix stays in the model's KV cache); ``rollback`` drops the newest step's cache
entries. ``score_solution`` scores a whole solution from scratch, with no cache: the reference that
incremental scoring must match.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch

from rsd_core.backends.hf import CachedModel
from rsd_core.events import ModelUsage
from rsd_core.rewards.base import Conversation, RewardModel


class IncrementalPRM(RewardModel):
    def __init__(self, model: Any, tokenizer: Any, name: str | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.name = name or getattr(model, "name_or_path", type(self).__name__)
        pad = getattr(tokenizer, "pad_token_id", None)
        pad = pad if pad is not None else getattr(tokenizer, "eos_token_id", None)
        # model=None: the family's input layout only (a server scores it; see backends/vllm.py)
        self.cached: CachedModel = CachedModel(model, pad or 0, keep_last_logits_only=True) if model is not None else None  # type: ignore[assignment]
        self._lens: dict[int, list[int]] = {}

    # ---------------------------------------------------------------- the family's layout
    @abstractmethod
    def header_ids(self, conversation: Conversation) -> list[int]: ...

    @abstractmethod
    def step_ids(self, step: str, index: int) -> list[int]: ...

    def step_ids_for(self, seq: int, step: str, index: int) -> list[int]:
        """``step_ids``, for families whose layout depends on the sequence's earlier steps."""
        return self.step_ids(step, index)

    def query_ids(self, step: str) -> list[int]:
        return []

    @abstractmethod
    def reward_from(self, logits: torch.Tensor) -> torch.Tensor:
        """[batch, ...] output at the last position -> [batch] rewards in [0, 1]."""

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    # ---------------------------------------------------------------- the contract
    def start(self, seq: int, conversation: Conversation) -> None:
        self.cached.new(seq, self.header_ids(conversation))
        self._lens[seq] = []

    @torch.inference_mode()
    def score(self, seqs: list[int], steps: list[str]) -> list[float]:
        if not seqs:
            return []
        queries = []
        for s, text in zip(seqs, steps):
            ids = self.step_ids_for(s, text, len(self._lens[s]))
            q = self.query_ids(text)
            self.cached.append(s, ids + q)
            self.cached.count_scored(s, len(ids))
            self._lens[s].append(len(ids))
            queries.append(len(q))
        logits, _, _ = self.cached.run(seqs)
        rewards = self.reward_from(logits.float()).clamp(0.0, 1.0).tolist()
        for s, nq in zip(seqs, queries):
            self.cached.truncate(s, nq)  # the question about the step is not part of the prefix
        return rewards

    def rollback(self, seqs: list[int]) -> None:
        for s in seqs:
            self.cached.truncate(s, self._lens[s].pop())

    def release(self, seqs: list[int]) -> None:
        for s in seqs:
            self.cached.release(s)
            self._lens.pop(s, None)

    def usage(self, seq: int) -> ModelUsage:
        return self.cached.states[seq].usage

    @torch.inference_mode()
    def score_solution(self, conversation: Conversation, steps: list[str]) -> list[float]:
        """Every step's reward, each from one uncached forward over everything before it."""
        out = []
        ids = self.header_ids(conversation)
        dev = self.cached.device
        for i, step in enumerate(steps):
            ids = ids + self.step_ids(step, i)
            full = ids + self.query_ids(step)
            logits = self.model(input_ids=torch.tensor([full], device=dev)).logits
            logits = logits[:, -1] if logits.dim() == 3 else logits
            out.append(float(self.reward_from(logits.float()).clamp(0.0, 1.0)[0]))
        return out


def token_id(tokenizer: Any, text: str, what: str) -> int:
    """The single token ``text`` encodes to, or a clear error naming the family's expectation."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) != 1:
        by_name = tokenizer.convert_tokens_to_ids(text)
        if isinstance(by_name, int) and by_name != getattr(tokenizer, "unk_token_id", None):
            return by_name
        raise ValueError(f"{what} {text!r} is not a single token of this tokenizer (it encodes to {ids}); "
                         "is this the right checkpoint for this reward-model family?")
    return ids[0]
