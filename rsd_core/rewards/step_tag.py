"""Step-tag classifier PRMs: Qwen2.5-Math-PRM-7B/-72B and the toy PRM.

Input: the chat-formatted question, then the assistant turn with every step followed by the step
tag (``<extra_0>``). The reward of a step is the softmax over the two classes at its tag, class 1.
Scoring is incremental: the header and earlier steps stay in the PRM's KV cache.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForTokenClassification, PreTrainedModel

from rsd_core.backends.hf import CachedModel, load_pretrained
from rsd_core.events import ModelUsage
from rsd_core.rewards.base import Conversation, RewardModel, question_of

QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


class StepTagPRM(RewardModel):
    """A token classifier read at step tags.

    Args:
        model: a ``*ForTokenClassification`` (2 labels) or a model whose output ``logits`` are
            [batch, tokens, 2].
        tokenizer: its tokenizer; must know ``step_tag``.
        step_tag: the token that closes each step.
        system_prompt: system turn put before the question (Qwen2.5-Math-PRM's own by default;
            a checkpoint may set ``rsd_reward.system_prompt`` in its config, ``null`` for none).
    """

    def __init__(self, model: PreTrainedModel, tokenizer: Any, step_tag: str = "<extra_0>",
                 system_prompt: str | None = QWEN_PRM_SYSTEM, name: str | None = None):
        tag_id = tokenizer.convert_tokens_to_ids(step_tag)
        if tag_id is None or tag_id == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(tag_id) != step_tag:
            raise ValueError(f"the PRM tokenizer has no step tag {step_tag!r}: pass the tag its training used")
        self.model, self.tokenizer, self.tag_id = model, tokenizer, tag_id
        self.system_prompt = system_prompt
        self.name = name or getattr(model, "name_or_path", "step-tag PRM")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.cached = CachedModel(model, pad or 0, keep_last_logits_only=False)
        self._step_lens: dict[int, list[int]] = {}

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> StepTagPRM:
        load_kw = {k: kwargs.pop(k) for k in ("device_map", "dtype", "trust_remote_code") if k in kwargs}
        model, tok = load_pretrained(AutoModelForTokenClassification, name_or_path, **load_kw)
        declared = getattr(model.config, "rsd_reward", None) or {}
        for key in ("step_tag", "system_prompt"):
            if key in declared and key not in kwargs:
                kwargs[key] = declared[key]
        return cls(model, tok, name=name_or_path, **kwargs)

    def header_ids(self, conversation: Conversation) -> list[int]:
        msgs = [{"role": "user", "content": question_of(conversation)}]
        if self.system_prompt is not None:
            msgs.insert(0, {"role": "system", "content": self.system_prompt})
        text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def step_ids(self, step: str) -> list[int]:
        return self.tokenizer(step.strip(), add_special_tokens=False).input_ids + [self.tag_id]

    def start(self, seq: int, conversation: Conversation) -> None:
        self.cached.new(seq, self.header_ids(conversation))
        self._step_lens[seq] = []

    @torch.inference_mode()
    def score(self, seqs: list[int], steps: list[str]) -> list[float]:
        if not seqs:
            return []
        for s, text in zip(seqs, steps):
            ids = self.step_ids(text)
            self.cached.append(s, ids)
            self._step_lens[s].append(len(ids))
        logits, _, _ = self.cached.run(seqs)
        return torch.softmax(logits.float(), dim=-1)[:, 1].tolist()

    def rollback(self, seqs: list[int]) -> None:
        for s in seqs:
            self.cached.truncate(s, self._step_lens[s].pop())

    def release(self, seqs: list[int]) -> None:
        for s in seqs:
            self.cached.release(s)
            self._step_lens.pop(s, None)

    def usage(self, seq: int) -> ModelUsage:
        return self.cached.states[seq].usage

    @torch.inference_mode()
    def score_solution(self, conversation: Conversation, steps: list[str]) -> list[float]:
        """Every step's reward from one forward over the whole solution (no cache): the reference."""
        ids = self.header_ids(conversation)
        for s in steps:
            ids += self.step_ids(s)
        x = torch.tensor([ids], device=self.cached.device)
        probs = torch.softmax(self.model(input_ids=x).logits[0].float(), dim=-1)[:, 1]
        return probs[x[0] == self.tag_id].tolist()
