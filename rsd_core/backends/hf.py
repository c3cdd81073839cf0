"""Local transformers models behind the generator contract.

The per-sequence KV caches live in ``runtime/cached_model.py`` (plain path) and ``backends/fast.py``
(static slots, CUDA graphs); this module renders prompts, finds step ends and hands out steps.

Example:
    >>> gen = HFGenerator.from_pretrained("path/to/model")            # doctest: +SKIP
    >>> gen.start(0, gen.render_prompt([{"role": "user", "content": "2+2?"}]))  # doctest: +SKIP
    >>> gen.generate_step([0], budgets=[64])[0].text                   # doctest: +SKIP
"""

from __future__ import annotations

import re
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from rsd_core.backends.base import Prompt, Step
from rsd_core.backends.fast import FastCachedModel, fast_path_supported
from rsd_core.config import SamplingConfig
from rsd_core.constraints import ConstrainedRows, Cursor
from rsd_core.errors import PromptTooLongError
from rsd_core.events import ModelUsage
from rsd_core.messages import with_tools_in_system_turn
from rsd_core.runtime.cached_model import CachedModel, StepBoundary, embedding_weight
from rsd_core.runtime.loading import load_pretrained, pop_load_kwargs
from rsd_core.runtime.tokens import control_strings

__all__ = ["CachedModel", "HFGenerator", "StepBoundary", "context_length", "eos_token_ids", "load_pretrained",
           "render_prompt"]

# --------------------------------------------------------------------------- model facts


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
            # The template ignores tools (SmolLM2's does): state them in the system turn instead.
            text = tokenizer.apply_chat_template(with_tools_in_system_turn(chat, tools), tokenize=False,
                                                 add_generation_prompt=True)
        ids = _encode_marked(tokenizer, text + reply_prefix, untrusted)
    if not ids:
        raise ValueError("the prompt is empty after tokenization")
    if len(ids) >= context_length:
        raise PromptTooLongError(f"the prompt has {len(ids)} tokens but {name} reads at most {context_length}")
    return ids


# --------------------------------------------------------------------------- the generator


class HFGenerator:
    """A transformers causal LM behind the generator contract (see ``backends.base.Generator``)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        *,
        sampling: SamplingConfig | None = None,
        step_delimiters: list[str] | None = None,
        name: str | None = None,
        sync_every: int | None = None,
        fast: bool | None = None,
        max_len: int = 4096,
    ):
        """``fast``: the static-cache, CUDA-graph decode path (``backends/fast.py``); by default on for
        supported models on CUDA. ``max_len``: its cache columns per sequence slot."""
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or getattr(model, "name_or_path", None) or type(model).__name__
        self.sampling = sampling or SamplingConfig()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        pad = pad if pad is not None else 0
        on_gpu = model.get_input_embeddings().weight.device.type == "cuda"
        use_fast = fast if fast is not None else (on_gpu and fast_path_supported(model))
        self.cached: CachedModel | FastCachedModel = (
            FastCachedModel(model, pad, max_len=max_len) if use_fast else CachedModel(model, pad)
        )
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.context_length = context_length(model)
        self._delimiters = list(step_delimiters or ["\n\n"])
        self._boundary: StepBoundary | None = None
        # On CPU a host sync is free; on an accelerator, check for "all rows done" every few tokens.
        self.sync_every = sync_every or (1 if self.cached.device.type == "cpu" else 8)
        self._generator: torch.Generator | None = None

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> HFGenerator:
        load_kw = pop_load_kwargs(kwargs)
        model, tok = load_pretrained(AutoModelForCausalLM, name_or_path, **load_kw)
        return cls(model, tok, name=name_or_path, **kwargs)

    # configuration -----------------------------------------------------------
    def set_step_delimiters(self, delimiters: list[str]) -> None:
        if delimiters != self._delimiters:
            self._delimiters, self._boundary = list(delimiters), None

    @property
    def boundary(self) -> StepBoundary:
        if self._boundary is None:
            vocab = int(embedding_weight(self.model).shape[0])
            self._boundary = StepBoundary(self.tokenizer, self._delimiters, self.eos_ids, vocab, self.cached.device)
        return self._boundary

    def reseed(self, seed: int | None) -> None:
        if seed is None:
            self._generator = None
        else:
            self._generator = torch.Generator(device=self.cached.device)
            self._generator.manual_seed(seed)

    # the contract --------------------------------------------------------------
    def render_prompt(self, prompt: Prompt, tools: list[dict[str, Any]] | None = None,
                      reply_prefix: str = "") -> list[int]:
        return render_prompt(self.tokenizer, prompt, tools, self.name, self.context_length, reply_prefix)

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def start(self, seq: int, prompt_ids: list[int]) -> None:
        self.cached.new(seq, prompt_ids)

    def extend(self, seqs: list[int], token_ids: list[list[int]]) -> None:
        for s, ids in zip(seqs, token_ids):
            self.cached.append(s, ids)

    def generate_step(self, seqs: list[int], budgets: list[int],
                      constraints: list[Cursor | None] | None = None) -> list[Step]:
        if not seqs:
            return []
        budgets = [max(1, min(b, self.context_length - len(self.cached.states[s].ids))) for s, b in zip(seqs, budgets)]
        rows = {i: c for i, c in enumerate(constraints or []) if c is not None}
        _, gens, eos = self.cached.run(
            seqs, budgets=budgets, sampling=self.sampling, generator=self._generator,
            boundary=self.boundary, sync_every=self.sync_every, vocab_limit=len(self.tokenizer),
            constrained=ConstrainedRows(rows, self.tokenizer, self.eos_ids, len(self.tokenizer)) if rows else None,
        )
        texts = self.tokenizer.batch_decode(gens, skip_special_tokens=True)
        delims = self._delimiters
        return [
            Step(g, t, e, (not e) and any(t.endswith(d) or d in t for d in delims))
            for g, t, e in zip(gens, texts, eos)
        ]

    def rollback(self, seqs: list[int], n_tokens: list[int]) -> None:
        for s, n in zip(seqs, n_tokens):
            self.cached.truncate(s, n)

    def release(self, seqs: list[int]) -> None:
        for s in seqs:
            self.cached.release(s)

    def usage(self, seq: int) -> ModelUsage:
        return self.cached.states[seq].usage

    def num_tokens(self, seq: int) -> int:
        return len(self.cached.states[seq].ids)
