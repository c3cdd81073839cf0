"""Math-Shepherd-style PRMs (peiyi9979/math-shepherd-mistral-7b-prm and kin).

A causal LM. Input: question, a space, then the steps, each followed by the step tag (``" ки"``) and a
newline. The reward of a step is P("+") over {"+", "-"} of the next-token distribution at its tag.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM

from rsd_core.backends.hf import load_pretrained, pop_load_kwargs
from rsd_core.rewards.base import Conversation, question_of
from rsd_core.rewards.incremental import IncrementalPRM, token_id


class MathShepherdPRM(IncrementalPRM):
    def __init__(self, model: Any, tokenizer: Any, step_tag: str = "ки", good: str = "+", bad: str = "-",
                 name: str | None = None):
        super().__init__(model, tokenizer, name)
        self.tag = step_tag
        self.tag_id = token_id(tokenizer, step_tag, "the step tag")
        self.good_id, self.bad_id = token_id(tokenizer, good, "the good token"), token_id(tokenizer, bad, "the bad token")

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> MathShepherdPRM:
        load_kw = pop_load_kwargs(kwargs)
        model, tok = load_pretrained(AutoModelForCausalLM, name_or_path, **load_kw)
        return cls(model, tok, name=name_or_path, **kwargs)

    def header_ids(self, conversation: Conversation) -> list[int]:
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        return bos + self.encode(question_of(conversation) + " ")

    def step_ids(self, step: str, index: int) -> list[int]:
        lead = "\n" if index else ""
        return self.encode(lead + step.strip() + " ") + [self.tag_id]

    def reward_from(self, logits: torch.Tensor) -> torch.Tensor:
        pair = logits[:, [self.good_id, self.bad_id]]
        return torch.softmax(pair, dim=-1)[:, 0]
