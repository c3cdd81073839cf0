"""Math-Shepherd PRMs: peiyi9979/math-shepherd-mistral-7b-prm and kin.

The model card's procedure: ``input = f"{question} {output}"`` with the output written
``"Step 1: <step 1> ки\\nStep 2: <step 2> ки"``, tokenized as ONE string (with BOS);
``candidates = encode("+ -")[1:]`` (``[648, 387]``, ``▁+`` and ``▁-``), ``step_tag_id =
encode("ки")[-1]`` (``12902``, ``▁ки``); the reward of a step is the softmax over the two candidates
at its tag, index 0.

SentencePiece marks word starts (``▁``), so a step tokenized alone is not the same as inside the
whole string. Each step is tokenized together with the text just before it (the question for the
first, ``"ки"`` after that) and only its own ids are kept: the same ids as the whole string, read
one step at a time. The question's trailing whitespace is dropped (a question ending in spaces would
otherwise meet the separating space).

The checkpoint has no ``tokenizer.json``, only ``tokenizer.model``: transformers needs
``sentencepiece`` and ``protobuf`` for it (``pip install 'rsd[sentencepiece]'``).
"""

from __future__ import annotations

from typing import Any

import torch

from rsd_core.rewards.base import Conversation, question_of
from rsd_core.rewards.format import PRMFormat, token_id
from rsd_core.rewards.incremental import IncrementalPRM


class MathShepherdFormat(PRMFormat):
    """Question, a space, then ``Step k: <step> ки`` lines joined by newlines; P(good) at each tag.

    Args:
        step_tag / good / bad: the tag after each step and the two candidate tokens.
        step_prefix: written before each step, ``{index}`` the step's number from 1 (the card's
            ``"Step {index}: "``; ``""`` drops it).
    """

    def __init__(self, tokenizer: Any, step_tag: str = "ки", good: str = "+", bad: str = "-",
                 step_prefix: str = "Step {index}: "):
        super().__init__(tokenizer)
        self.step_tag, self.step_prefix = step_tag, step_prefix
        self.tag_id = token_id(tokenizer, step_tag, "the step tag")  # the card's encode("ки")[-1], past BOS
        pair = self.encode(f"{good} {bad}")
        if len(pair) != 2:  # the card's candidates: encode("+ -")[1:], past BOS
            pair = [token_id(tokenizer, good, "the good token"), token_id(tokenizer, bad, "the bad token")]
        self.good_id, self.bad_id = int(pair[0]), int(pair[1])

    def _piece(self, index: int, step: str) -> str:
        return f"{self.step_prefix.format(index=index + 1)}{step.strip()} {self.step_tag}"

    def header_ids(self, conversation: Conversation) -> list[int]:
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        return bos + self.encode(question_of(conversation).rstrip())

    def step_ids(self, conversation: Conversation, previous: list[str], step: str) -> list[int]:
        index = len(previous)
        if index == 0:
            return self.continuation(question_of(conversation).rstrip(), " " + self._piece(0, step))
        return self.continuation(self.step_tag, "\n" + self._piece(index, step))

    def reward_from(self, output: torch.Tensor) -> torch.Tensor:
        return torch.softmax(output[:, [self.good_id, self.bad_id]], dim=-1)[:, 0]


class MathShepherdPRM(IncrementalPRM):
    """A Math-Shepherd PRM on a local transformers model (see the module docstring for the procedure)."""

    format: MathShepherdFormat
    format_class = MathShepherdFormat
