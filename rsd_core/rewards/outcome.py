"""Outcome reward models: a sequence classifier that scores a whole answer (e.g. Skywork-Reward).

Used step by step, it scores the answer so far (the chat-formatted question and the steps up to this
one, closed as a finished assistant turn); for best-of-N, aggregate with ``"last"`` so only the final
answer's score counts. One label: sigmoid of the logit; two: softmax class 1. The question and the
earlier steps stay cached; only the new step and the turn's closing tokens are read.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from rsd_core.backends.hf import load_pretrained, pop_load_kwargs
from rsd_core.rewards.base import Conversation, question_of
from rsd_core.rewards.incremental import IncrementalPRM


class OutcomeRM(IncrementalPRM):
    def __init__(self, model: Any, tokenizer: Any, name: str | None = None):
        super().__init__(model, tokenizer, name)
        marker = "\x00RSD\x00"
        text = tokenizer.apply_chat_template([{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}],
                                             tokenize=False)
        self._close = text.split(marker, 1)[1]  # what ends an assistant turn in this template

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> OutcomeRM:
        load_kw = pop_load_kwargs(kwargs)
        model, tok = load_pretrained(AutoModelForSequenceClassification, name_or_path, **load_kw)
        if model.config.pad_token_id is None:  # it pools at the last non-pad token
            model.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return cls(model, tok, name=name_or_path, **kwargs)

    def header_ids(self, conversation: Conversation) -> list[int]:
        msgs = [{"role": "user", "content": question_of(conversation)}]
        return self.encode(self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))

    def step_ids(self, step: str, index: int) -> list[int]:
        return self.encode(step)

    def query_ids(self, step: str) -> list[int]:
        return self.encode(self._close)

    def reward_from(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits[:, 0]) if logits.shape[-1] == 1 else torch.softmax(logits, -1)[:, 1]
