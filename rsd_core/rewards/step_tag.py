"""Step-tag classifier PRMs: Qwen/Qwen2.5-Math-PRM-7B and -72B, the toy step-tag PRM, any ``*ForTokenClassification``.

The model card's procedure: messages = system (``QWEN_PRM_SYSTEM``), user = the question, assistant =
``"<extra_0>".join(steps) + "<extra_0>"``, rendered with the checkpoint's chat template and tokenized
as one string; the reward of step k is the softmax over the two labels at the k-th ``<extra_0>``,
index 1. Steps are the solution split at ``"\\n\\n"``, so a step's trailing whitespace (the delimiter)
is not part of it.

Loading: Qwen2.5-Math-PRM declares ``Qwen2ForProcessRewardModel`` with its own code (``auto_map``).
Without ``trust_remote_code`` its ``score.0``/``score.2`` head is read natively (``rewards/heads.py``);
with it, the checkpoint's own class runs, as the card does. A plain token classifier loads with
``AutoModelForTokenClassification``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoModelForTokenClassification

from rsd_core.errors import ModelLoadError
from rsd_core.rewards.base import Conversation, question_of
from rsd_core.rewards.format import MARKER, PRMFormat, split_at_marker, token_id
from rsd_core.rewards.heads import process_reward_head
from rsd_core.rewards.incremental import IncrementalPRM
from rsd_core.runtime.loading import load_pretrained, pop_load_kwargs

QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


class StepTagFormat(PRMFormat):
    """The chat-rendered question, then each step followed by the step tag; the score is read at the tag.

    Args:
        step_tag: the token that closes each step.
        system_prompt: the system turn before the question (Qwen2.5-Math-PRM's own by default; ``None``
            for none, in which case the chat template's default applies).
    """

    def __init__(self, tokenizer: Any, step_tag: str = "<extra_0>", system_prompt: str | None = QWEN_PRM_SYSTEM):
        super().__init__(tokenizer)
        self.step_tag, self.system_prompt = step_tag, system_prompt
        self.tag_id = token_id(tokenizer, step_tag, "the step tag")

    def _header_text(self, question: str) -> str:
        msgs = [{"role": "user", "content": question}, {"role": "assistant", "content": MARKER}]
        if self.system_prompt is not None:
            msgs.insert(0, {"role": "system", "content": self.system_prompt})
        return split_at_marker(self.tokenizer, msgs)[0]

    def header_ids(self, conversation: Conversation) -> list[int]:
        # as the card: tokenizer.encode(rendered text), special tokens included
        return list(self.tokenizer(self._header_text(question_of(conversation))).input_ids)

    def step_ids(self, conversation: Conversation, previous: list[str], step: str) -> list[int]:
        body = step.rstrip()
        if previous:  # after a tag: nothing before it can merge with the step
            return self.encode(body) + [self.tag_id]
        return self.continuation(self._header_text(question_of(conversation)), body) + [self.tag_id]

    def reward_from(self, output: torch.Tensor) -> torch.Tensor:
        return torch.softmax(output, dim=-1)[:, 1]


class StepTagPRM(IncrementalPRM):
    """A step-tag PRM on a local transformers model (see the module docstring for the procedure)."""

    format: StepTagFormat

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> StepTagPRM:
        load_kw = pop_load_kwargs(kwargs)
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=load_kw.get("trust_remote_code", False),
                                            revision=load_kw.get("revision"))
        archs = getattr(config, "architectures", None) or []
        own_class = any(a.endswith("ForProcessRewardModel") for a in archs)
        if own_class and load_kw.get("trust_remote_code") and "AutoModel" in (getattr(config, "auto_map", None) or {}):
            model, tok = load_pretrained(AutoModel, name_or_path, **load_kw)  # the checkpoint's own class
            _check_cached_call(name_or_path, model)
        elif own_class:
            model, tok = load_pretrained(process_reward_head(config), name_or_path, **load_kw)
        else:
            model, tok = load_pretrained(AutoModelForTokenClassification, name_or_path, **load_kw)
        declared = getattr(model.config, "rsd_reward", None) or {}
        for key in ("step_tag", "system_prompt"):
            if key in declared and key not in kwargs:
                kwargs[key] = declared[key]
        return cls(StepTagFormat(tok, **kwargs), model, name=name_or_path)


def _check_cached_call(name: str, model: Any) -> None:
    """The scorer reads each step over a KV cache: the checkpoint's class must take one."""
    params = inspect.signature(model.forward).parameters
    needed = [p for p in ("attention_mask", "position_ids") if p not in params]
    if "past_key_values" not in params and "cache" not in params:
        needed.append("past_key_values")
    if needed and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        raise ModelLoadError(f"{name!r}: its own model class ({type(model).__name__}) takes no {', '.join(needed)}, "
                             "which incremental scoring passes; load it without trust_remote_code to use the "
                             "native head")
