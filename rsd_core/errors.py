"""The library's exception types. Every error says what was wrong, the value seen, and what would be right."""

from __future__ import annotations


class RSDError(Exception):
    """Base class of every error this library raises on purpose."""


class ModelLoadError(RSDError, OSError):
    """A model, tokenizer or reward model could not be loaded (missing path, wrong kind of checkpoint)."""


class UnknownRewardModelError(RSDError, ValueError):
    """A checkpoint that matches no supported reward-model family."""


class PromptTooLongError(RSDError, ValueError):
    """A prompt that does not fit the model's context window (raised before any model work)."""


class InvalidPromptError(RSDError, ValueError):
    """A prompt or message list that cannot be rendered (empty, unknown role, bad content)."""
