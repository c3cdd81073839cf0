"""rsd: Reward-Guided Speculative Decoding on local transformers models.

Example:
    >>> from rsd_core import RewardGuidedDecoder
    >>> dec = RewardGuidedDecoder.from_pretrained()           # doctest: +SKIP
    >>> dec.generate(["Ann has 12 apples. She buys 5 more. How many apples does Ann have now?"])  # doctest: +SKIP
"""

from rsd_core.accounting import GenerationStats, ModelUsage
from rsd_core.config import RSDConfig, SamplingConfig
from rsd_core.decoder import RewardGuidedDecoder
from rsd_core.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    InvalidPromptError,
    ModelLoadError,
    ModelMismatchError,
    ModelRunError,
    PromptTooLongError,
    RSDError,
    UnknownRewardModelError,
)
from rsd_core.events import RSDResult, SequenceError, StepEvent, TargetInvocationEvent
from rsd_core.rewards import FunctionReward, RewardModel, load_reward_model
from rsd_core.weighting import Weighting

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "ModelMismatchError",
    "ModelRunError",
    "FunctionReward",
    "GenerationStats",
    "InvalidPromptError",
    "ModelLoadError",
    "ModelUsage",
    "PromptTooLongError",
    "SequenceError",
    "RSDConfig",
    "RSDError",
    "RSDResult",
    "RewardGuidedDecoder",
    "RewardModel",
    "SamplingConfig",
    "StepEvent",
    "TargetInvocationEvent",
    "UnknownRewardModelError",
    "Weighting",
    "load_reward_model",
]
