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

from rsd_core.rewards.base import Conversation, question_of
from rsd_core.rewards.format import MARKER, PRMFormat, split_at_marker
from rsd_core.rewards.incremental import IncrementalPRM


class OutcomeFormat(PRMFormat):
    def __init__(self, tokenizer: Any):
        super().__init__(tokenizer)
        # what ends an assistant turn in this template
        self._close = split_at_marker(tokenizer, [{"role": "user", "content": "q"},
                                                  {"role": "assistant", "content": MARKER}])[1]

    def header_ids(self, conversation: Conversation) -> list[int]:
        msgs = [{"role": "user", "content": question_of(conversation)}]
        return self.encode(self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))

    def step_ids(self, conversation: Conversation, previous: list[str], step: str) -> list[int]:
        return self.encode(step)

    def query_ids(self, conversation: Conversation, previous: list[str], step: str) -> list[int]:
        return self.encode(self._close)

    def reward_from(self, output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(output[:, 0]) if output.shape[-1] == 1 else torch.softmax(output, -1)[:, 1]


class OutcomeRM(IncrementalPRM):
    format: OutcomeFormat
    format_class = OutcomeFormat
    auto_class = AutoModelForSequenceClassification

    def __init__(self, fmt: OutcomeFormat, model: Any, name: str | None = None):
        tok = fmt.tokenizer
        if model.config.pad_token_id is None:  # it pools at the last non-pad token
            model.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        super().__init__(fmt, model, name)
