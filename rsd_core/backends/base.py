"""The generator contract: what the decoder needs from wherever tokens come from.

A generator keeps, for each sequence it was told about, the token ids so far and whatever cache it
needs so it never re-reads a prefix. The decoder only ever appends (``extend``), asks for the next
step (``generate_step``) or takes back the newest tokens (``rollback``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from rsd_core.accounting import ModelUsage
from rsd_core.config import SamplingConfig

if TYPE_CHECKING:
    from rsd_core.constraints import Cursor

Prompt = str | list[dict[str, Any]]


@dataclass
class Step:
    """One step a generator wrote."""

    token_ids: list[int]
    text: str  # decoded, delimiter included, special tokens left out
    eos: bool  # ended at end-of-sequence
    delimited: bool  # ended at a step delimiter (otherwise the token budget ran out)
    # The distributions each token was drawn from ([n, V]), kept only when sampling for a speculated rewrite.
    probs: Any = field(default=None, repr=False)
    forwards: int = 0  # forward passes this step took (0: not counted by this generator)
    speculated: int = 0  # leading tokens kept from a proposal (a rejected draft step) instead of decoded


@runtime_checkable
class Generator(Protocol):
    tokenizer: Any
    name: str
    context_length: int
    sampling: SamplingConfig  # set by the decoder for each run

    def set_step_delimiters(self, delimiters: list[str]) -> None: ...

    def render_prompt(self, prompt: Prompt, tools: list[dict[str, Any]] | None = None,
                      reply_prefix: str = "") -> list[int]:
        """Token ids for a raw text prompt or a chat (rendered with the model's chat template), followed
        by ``reply_prefix``, the forced start of the reply (e.g. an opened tool call)."""
        ...

    def encode_text(self, text: str) -> list[int]:
        """Token ids of a continuation (no special tokens added)."""
        ...

    def start(self, seq: int, prompt_ids: list[int]) -> None: ...

    def extend(self, seqs: list[int], token_ids: list[list[int]]) -> None:
        """Append tokens written elsewhere; they are read lazily, with the next call that needs them."""
        ...

    def generate_step(self, seqs: list[int], budgets: list[int],
                      constraints: list[Cursor | None] | None = None) -> list[Step]:
        """One step of each sequence, at most ``budgets`` tokens. ``constraints``: where each sequence
        stands in the run's grammar (``rsd_core.constraints``; None: unconstrained); a generator that
        cannot apply one writes unconstrained."""
        ...

    def rollback(self, seqs: list[int], n_tokens: list[int]) -> None:
        """Forget the newest ``n`` tokens of each sequence (their cache entries too)."""
        ...

    def release(self, seqs: list[int]) -> None: ...

    def usage(self, seq: int) -> ModelUsage: ...

    def num_tokens(self, seq: int) -> int:
        """Tokens of the sequence so far (prompt included)."""
        ...

    def reseed(self, seed: int | None) -> None: ...
