"""Prompts as a model reads them: the chat rendered with the tokenizer's own template (tools in the
system turn where the template drops them), what users and tools wrote tokenized as text, and the
facts about a checkpoint that budgets need (its EOS ids, its context length). Shared by the local
(``hf.py``) and served (``vllm.py``) backends.

Example:
    >>> ids = render_prompt(tokenizer, [{"role": "user", "content": "2+2?"}], None, "m", 4096)  # doctest: +SKIP
"""

from __future__ import annotations

import re
from typing import Any

from transformers import PreTrainedModel

from rsd_core.backends.base import Prompt
from rsd_core.errors import PromptTooLongError
from rsd_core.runtime.tokens import control_strings
from rsd_core.tool_format import tool_format_for

__all__ = ["ChatPrompts", "context_length", "eos_token_ids", "render_prompt"]


def eos_token_ids(model: PreTrainedModel, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    gc = getattr(model, "generation_config", None)
    eos = getattr(gc, "eos_token_id", None) if gc is not None else None
    for e in (eos if isinstance(eos, list) else [eos]):
        if e is not None:
            ids.add(int(e))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def context_length(model: PreTrainedModel) -> int:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(getattr(cfg, "max_position_embeddings", None) or 1 << 30)


def _with_untrusted_marked(tokenizer: Any, chat: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The chat with each user or tool message that spells a control token replaced by a marker."""
    controls = control_strings(tokenizer)
    untrusted: dict[str, str] = {}
    out = []
    for i, m in enumerate(chat):
        content = m.get("content")
        if m.get("role") in ("user", "tool") and isinstance(content, str) and any(c in content for c in controls):
            marker = f"\x00RSD-TEXT-{i}\x00"
            untrusted[marker] = content
            m = {**m, "content": marker}
        out.append(m)
    return out, untrusted


def _encode_marked(tokenizer: Any, text: str, untrusted: dict[str, str]) -> list[int]:
    if not untrusted:
        return list(tokenizer(text, add_special_tokens=False).input_ids)
    ids: list[int] = []
    for piece in re.split("(" + "|".join(map(re.escape, untrusted)) + ")", text):
        if piece in untrusted:
            ids += tokenizer(untrusted[piece], add_special_tokens=False, split_special_tokens=True).input_ids
        elif piece:
            ids += tokenizer(piece, add_special_tokens=False).input_ids
    return ids


def render_prompt(tokenizer: Any, prompt: Prompt, tools: list[dict[str, Any]] | None, name: str,
                  context_length: int, reply_prefix: str = "") -> list[int]:
    """Token ids of a raw text prompt, or of a chat through the tokenizer's chat template (with tools).

    ``reply_prefix`` is text the reply is forced to start with; it is tokenized together with the
    rendered prompt, exactly as if the model had written it.

    Checked before any model work: empty prompts, chats for models with no template, and prompts
    that leave no room in the context raise clear errors.
    """
    if isinstance(prompt, str):
        if tools:
            raise ValueError("tools need a chat prompt (a list of messages), not a raw string")
        ids = tokenizer(prompt + reply_prefix).input_ids
    else:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(f"{name} has no chat template: pass a raw text prompt instead of messages")
        # What a user or a tool wrote is text, even where it spells a control token ("<|im_start|>system"):
        # it goes through the template as a marker and is tokenized with special tokens split.
        chat, untrusted = _with_untrusted_marked(tokenizer, prompt)
        text = tokenizer.apply_chat_template(chat, tools=tools, tokenize=False, add_generation_prompt=True)
        if tools and text == tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True):
            # The template ignores tools (SmolLM2's does): state them, and the call format, in the system turn.
            chat = tool_format_for(tokenizer).with_tools_in_system_turn(chat, tools)
            text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        ids = _encode_marked(tokenizer, text + reply_prefix, untrusted)
    if not ids:
        raise ValueError("the prompt is empty after tokenization")
    if len(ids) >= context_length:
        raise PromptTooLongError(f"the prompt has {len(ids)} tokens but {name} reads at most {context_length}")
    return ids


class ChatPrompts:
    """The prompt half of the generator contract, for a backend with ``tokenizer``, ``name`` and
    ``context_length``: prompts rendered by ``render_prompt``, user text encoded without special tokens."""

    tokenizer: Any
    name: str
    context_length: int

    def render_prompt(self, prompt: Prompt, tools: list[dict[str, Any]] | None = None,
                      reply_prefix: str = "") -> list[int]:
        return render_prompt(self.tokenizer, prompt, tools, self.name, self.context_length, reply_prefix)

    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)
