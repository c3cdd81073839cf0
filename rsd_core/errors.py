"""The library's exception types. Every error says what was wrong, the value seen, and what would be right."""

from __future__ import annotations


class RSDError(Exception):
    """Base class of every error this library raises on purpose."""


class ModelLoadError(RSDError, OSError):
    """A model, tokenizer or reward model could not be loaded (missing path, wrong kind of checkpoint)."""


class UnknownRewardModelError(RSDError, ValueError):
    """A checkpoint that matches no supported reward-model family."""


class RewardValueError(RSDError, ValueError):
    """A reward function returned something that is not a number in [0, 1]."""


class PromptTooLongError(RSDError, ValueError):
    """A prompt that does not fit the model's context window (raised before any model work)."""


class InvalidPromptError(RSDError, ValueError):
    """A prompt or message list that cannot be rendered (empty, unknown role, bad content)."""


class BackendError(RSDError, RuntimeError):
    """A model server failed a request: down, dropped the connection, too slow, or answered an error."""


class BackendUnavailableError(BackendError, ConnectionError):
    """A model server could not be reached (after the configured retries)."""


class BackendTimeoutError(BackendError, TimeoutError):
    """A model server did not answer within the configured timeout."""


class ModelMismatchError(BackendError, ValueError):
    """A server is up but does not serve the model it was configured with."""


class ModelRunError(RSDError, RuntimeError):
    """A model failed while generating or scoring (the original exception is its ``__cause__``).

    ``out_of_memory`` is set when the device ran out of memory. The run's sequences are released
    before this is raised, so the decoder stays usable.
    """

    def __init__(self, message: str, *, role: str = "", out_of_memory: bool = False):
        super().__init__(message)
        self.role, self.out_of_memory = role, out_of_memory

    @classmethod
    def wrap(cls, role: str, name: str, error: BaseException) -> ModelRunError:
        oom = type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()
        hint = (" (out of memory: lower the batch size, max_new_tokens or max_step_tokens, or load the models in "
                "a smaller dtype)") if oom else ""
        return cls(f"the {role} model ({name}) failed: {type(error).__name__}: {error}{hint}", role=role,
                   out_of_memory=oom)
