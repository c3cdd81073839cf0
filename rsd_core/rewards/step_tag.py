"""Step-tag classifier PRMs: Qwen2.5-Math-PRM-7B/-72B and the toy PRM.

Input: the chat-formatted question, then the assistant turn with every step followed by the step tag
(``<extra_0>``). The reward of a step is the softmax over the two classes at its tag, class 1.
A plain ``*ForTokenClassification`` checkpoint loads without remote code; Qwen2.5-Math-PRM's own
class (``Qwen2ForProcessRewardModel``) loads with ``trust_remote_code=True``.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModel, AutoModelForTokenClassification

from rsd_core.backends.hf import load_pretrained, pop_load_kwargs
from rsd_core.rewards.base import Conversation, question_of
from rsd_core.rewards.incremental import IncrementalPRM, token_id

QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


class StepTagPRM(IncrementalPRM):
    """A two-class token classifier read at step tags.

    Args:
        step_tag: the token that closes each step.
        system_prompt: system turn before the question (Qwen2.5-Math-PRM's own by default; a checkpoint
            may declare ``rsd_reward.system_prompt`` in its config, ``null`` for none).
    """

    def __init__(self, model: Any, tokenizer: Any, step_tag: str = "<extra_0>",
                 system_prompt: str | None = QWEN_PRM_SYSTEM, name: str | None = None):
        super().__init__(model, tokenizer, name)
        self.tag_id = token_id(tokenizer, step_tag, "the step tag")
        self.system_prompt = system_prompt

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> StepTagPRM:
        load_kw = pop_load_kwargs(kwargs)
        # Qwen2.5-Math-PRM ships its own head class: with remote code allowed, use it as its authors do.
        auto = AutoModel if load_kw.get("trust_remote_code") else AutoModelForTokenClassification
        model, tok = load_pretrained(auto, name_or_path, **load_kw)
        declared = getattr(model.config, "rsd_reward", None) or {}
        for key in ("step_tag", "system_prompt"):
            if key in declared and key not in kwargs:
                kwargs[key] = declared[key]
        return cls(model, tok, name=name_or_path, **kwargs)

    def header_ids(self, conversation: Conversation) -> list[int]:
        msgs = [{"role": "user", "content": question_of(conversation)}]
        if self.system_prompt is not None:
            msgs.insert(0, {"role": "system", "content": self.system_prompt})
        return self.encode(self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))

    def step_ids(self, step: str, index: int) -> list[int]:
        return self.encode(step.strip()) + [self.tag_id]

    def reward_from(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=-1)[:, 1]
