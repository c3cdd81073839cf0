"""Value-head PRMs: Skywork/Skywork-o1-Open-PRM-Qwen-2.5-1.5B and -7B (the RSD paper's PRM).

Skywork's reference (``prepare_input`` in its PRM inference code): ``encode(bos_token + problem + "\\n")``
(its bos is ``<|im_start|>``), then for each piece of ``response.split(step_token)``: ``encode(piece)``
plus the step token's id (``encode(step_token)[-1]``), pieces not stripped. The reward at each step
token is ``sigmoid(v_head.summary(h))``.

``step_token``: ``"\\n"`` by default, as Skywork's card and search-and-learn score; the RSD paper's own
code passes its step delimiter, ``"\\n\\n"``: use that to reproduce the paper. An RSD step is split the
same way; its reward is read at the step token that closes it (with ``"\\n"``, a step of several
lines is the last line's value, the earlier lines sit in the prefix). A step that does not end with
the step token (the last one, or one cut by the token budget) is closed with one, as the reference
closes the response's last piece.

Loading: the hub checkpoints ship only ``pytorch_model.bin`` and declare ``Qwen2ForPrmModel``, which
transformers does not know; the backbone and ``v_head.summary`` load natively (``rewards/heads.py``)
from ``.bin`` (``weights_only``) or safetensors. No remote code runs.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig

from rsd_core.rewards.base import Conversation, question_of
from rsd_core.rewards.format import PRMFormat
from rsd_core.rewards.heads import VALUE_HEAD_KEY_MAPPING, value_head
from rsd_core.rewards.incremental import IncrementalPRM
from rsd_core.runtime.loading import load_pretrained, pop_load_kwargs

SKYWORK_STEP_TOKEN = "\n"  # the model card's; "\n\n" reproduces the RSD paper's runs


class ValueHeadFormat(PRMFormat):
    """bos + question + ``"\\n"``, then each piece of a step and the step token; the value at the last one.

    Args:
        step_token: what separates steps for the PRM (``"\\n"``, the card's; ``"\\n\\n"``, the paper's).
    """

    def __init__(self, tokenizer: Any, step_token: str = SKYWORK_STEP_TOKEN):
        super().__init__(tokenizer)
        if not step_token:
            raise ValueError("step_token must be a non-empty string (Skywork's card uses '\\n')")
        self.step_token = step_token
        self.step_token_id = int(tokenizer(step_token).input_ids[-1])  # as the reference: encode(step_token)[-1]

    def header_ids(self, conversation: Conversation) -> list[int]:
        bos = self.tokenizer.bos_token or ""
        return list(self.tokenizer(bos + question_of(conversation) + "\n").input_ids)

    def step_ids(self, conversation: Conversation, previous: list[str], step: str) -> list[int]:
        pieces = step.split(self.step_token)
        if len(pieces) > 1 and pieces[-1] == "":
            pieces.pop()  # the step ends with the token: what follows it starts the next step's piece
        ids: list[int] = []
        for piece in pieces:
            ids += list(self.tokenizer(piece).input_ids) + [self.step_token_id]
        return ids

    def reward_from(self, output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(output[:, 0])


class ValueHeadPRM(IncrementalPRM):
    """A value-head PRM on a local transformers model (see the module docstring for the procedure)."""

    format: ValueHeadFormat

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> ValueHeadPRM:
        load_kw = pop_load_kwargs(kwargs)
        load_kw["trust_remote_code"] = False  # the head is plain weights: no code of the checkpoint's runs
        config = AutoConfig.from_pretrained(name_or_path, revision=load_kw.get("revision"))
        model, tok = load_pretrained(value_head(config), name_or_path, key_mapping=VALUE_HEAD_KEY_MAPPING, **load_kw)
        declared = getattr(model.config, "rsd_reward", None) or {}
        if "step_token" in declared and "step_token" not in kwargs:
            kwargs["step_token"] = declared["step_token"]
        return cls(ValueHeadFormat(tok, **kwargs), model, name=name_or_path)
