"""A reward-model family's input format: token ids from a question and its steps, and where the score is read.

A format is pure: it holds a tokenizer and the family's options, never a model. Each family has one
(``StepTagFormat``, ``ValueHeadFormat``, ``MathShepherdFormat``...), and every runtime's scorer reads
through it: ``IncrementalPRM`` runs it on a local transformers model, ``VLLMRewardModel`` sends its ids
to a server. So a PRM scores the same ids whether it is loaded here or served.

The ids are built step by step (the scorer keeps the prefix in its KV cache), yet must equal what the
family's reference code gets by tokenizing the whole solution at once. ``continuation`` is the tool
for that: it tokenizes a step together with the text just before it and keeps only the new ids.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any

import torch

from rsd_core.rewards.base import Conversation
from rsd_core.runtime.tokens import control_strings

log = logging.getLogger(__name__)


class PRMFormat(ABC):
    """How one reward-model family lays out its input.

    - ``header_ids(conversation)``: the ids before the first step (the question, in the family's layout);
    - ``step_ids(conversation, previous, step)``: the ids a step adds to the scored prefix, given the
      question and the earlier steps;
    - ``query_ids(conversation, previous, step)``: ids read after the step only to ask for its score, then dropped;
    - ``reward_from(output)``: the reward, from the model's output at the last position read.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    @abstractmethod
    def header_ids(self, conversation: Conversation) -> list[int]: ...

    @abstractmethod
    def step_ids(self, conversation: Conversation, previous: list[str], step: str) -> list[int]: ...

    def query_ids(self, conversation: Conversation, previous: list[str], step: str) -> list[int]:
        return []

    @abstractmethod
    def reward_from(self, output: torch.Tensor) -> torch.Tensor:
        """[batch, ...] model output at the scoring position -> [batch] rewards in [0, 1]."""

    def solution_ids(self, conversation: Conversation, steps: list[str]) -> tuple[list[int], list[int]]:
        """The whole solution's ids as the scorer builds them, and the position each step's score is read at."""
        ids, at = self.header_ids(conversation), []
        for i, step in enumerate(steps):
            ids = ids + self.step_ids(conversation, steps[:i], step)
            at.append(len(ids) - 1)
        return ids, at

    # ------------------------------------------------------------------ tokenizing helpers
    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` alone, with no special tokens added."""
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def continuation(self, context: str, text: str) -> list[int]:
        """Ids ``text`` adds after ``context`` when both are tokenized as one string.

        Tokenizers merge across a boundary (SentencePiece's word-initial ``▁``, BPE's whitespace runs), so
        a piece tokenized alone can differ from the same piece inside the whole string. ``context`` is
        the text just before ``text``; only its part after the last control token is tokenized again (text
        never merges across a control token), so a step costs its own length, not the prefix's. If the
        context's own ids change when ``text`` follows, the piece alone is used and a warning says so.
        """
        cut = max((context.rfind(c) + len(c) for c in control_strings(self.tokenizer) if c in context), default=0)
        context = context[cut:]
        before = self.encode(context)
        both = self.encode(context + text)
        if both[: len(before)] != before:
            log.warning("%s: %r does not tokenize apart from the text before it; scoring it tokenized alone",
                        type(self).__name__, text[:40])
            return self.encode(text)
        return both[len(before):]


def token_id(tokenizer: Any, text: str, what: str) -> int:
    """The single token ``text`` encodes to, or a clear error naming the family's expectation."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) != 1:
        by_name = tokenizer.convert_tokens_to_ids(text)
        if isinstance(by_name, int) and by_name != getattr(tokenizer, "unk_token_id", None):
            return by_name
        raise ValueError(f"{what} {text!r} is not a single token of this tokenizer (it encodes to {ids}); "
                         "is this the right checkpoint for this reward-model family?")
    return int(ids[0])


def render_chat(tokenizer: Any, conversation: list[dict[str, str]], generation_prompt: bool) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("this reward model needs a tokenizer with a chat template")
    return str(tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=generation_prompt))


MARKER = "\x00RSD\x00"


def split_at_marker(tokenizer: Any, conversation: list[dict[str, str]]) -> tuple[str, str]:
    """What the chat template writes before and after the content holding ``MARKER``."""
    text = render_chat(tokenizer, conversation, False)
    if MARKER not in text:
        raise ValueError("the chat template drops the assistant turn's content; this reward family needs it")
    pre, post = text.split(MARKER, 1)
    return pre, post
