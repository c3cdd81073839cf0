"""The options a user gives RSD, declared once: which models, and how each call runs.

``RSDOptions`` is what ``ChatRSD`` and ``RSDLLM`` are (their shared fields) and what the ``rsd``
command's model and decoding flags are built from (``add_arguments`` / ``from_arguments``). It gives
the decoder's ``RSDConfig`` (``to_config``) and the models to load (``model_spec``). A bad value is an
``OptionError``: a ``ValueError`` whose message names the option as the caller spells it
(``threshold=1.5`` here, ``--threshold 1.5`` in the CLI), the value and the rule.

Example:
    >>> RSDOptions(threshold=0.5).to_config(RSDConfig()).threshold
    0.5
    >>> try:
    ...     RSDOptions(threshold=1.5)
    ... except ValueError as e:
    ...     print(e)
    RSDOptions: threshold=1.5: input should be less than or equal to 1
"""

from __future__ import annotations

import argparse
import json
import re
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, Field, ValidationError

from rsd_core.config import RSDConfig, WeightingName

if TYPE_CHECKING:
    from rsd_core.decoder import RewardGuidedDecoder

__all__ = ["ModelSpec", "OptionError", "RSDOptions"]


UNSET: Any = object()  # a problem's value when the option was not given at all


def python_spelling(name: str, value: Any) -> str:
    """An option as a Python caller spells it (``threshold=1.5``; ``reward_model=`` when not given)."""
    return f"{name}=" if value is UNSET else f"{name}={value!r}"


class OptionError(ValueError):
    """Bad options: ``problems`` holds (option name, value given, rule broken) for each. A rule may name
    other options as ``{option}``: each is spelled the way the caller spells options."""

    def __init__(self, problems: list[tuple[str, Any, str]], prefix: str = "",
                 spell: Callable[[str, Any], str] = python_spelling) -> None:
        self.problems, self.prefix = problems, prefix

        def rule_text(rule: str) -> str:
            return _OPTION_REF.sub(lambda m: spell(m.group(1), UNSET), rule)

        super().__init__(prefix + "; ".join(f"{spell(name, value)}: {rule_text(rule)}"
                                            for name, value, rule in problems))

    def respelled(self, spell: Callable[[str, Any], str], prefix: str = "") -> OptionError:
        """The same problems with each option spelled another way (a CLI flag)."""
        return OptionError(self.problems, prefix, spell)


_OPTION_REF = re.compile(r"\{([a-z_]+)\}")


def _problems(e: ValidationError, names: dict[str, str] | None = None) -> list[tuple[str, Any, str]]:
    out = []
    for err in e.errors():
        field = ".".join(str(x) for x in err["loc"])
        out.append(((names or {}).get(field, field), err.get("input"), err["msg"].lower()))
    return out


@dataclass(frozen=True)
class ModelSpec:
    """The models to load, hashable, so that clients naming the same models share one decoder."""

    target: str | None = None
    draft: str | None = None
    reward: str | None = None
    reward_type: str | None = None
    device_map: str | None = None
    dtype: str | None = "auto"
    trust_remote_code: bool = False
    reward_options: str = "{}"  # JSON, sorted: the reward family's format options

    def canonical(self) -> ModelSpec:
        """The same models named one way (local paths resolved), so one checkpoint loads once."""
        from rsd_core.runtime.checkpoints import canonical_name

        names: dict[str, Any] = {k: canonical_name(v) for k in ("target", "draft", "reward")
                                 if isinstance(v := getattr(self, k), str)}
        return replace(self, **names)

    def load(self, config: RSDConfig | None = None) -> RewardGuidedDecoder:
        """A decoder over these models (the embedded toy trio when no target and draft are named)."""
        from rsd_core.decoder import RewardGuidedDecoder

        return RewardGuidedDecoder.from_pretrained(
            self.draft, self.target, self.reward, config=config, device_map=self.device_map, dtype=self.dtype,
            trust_remote_code=self.trust_remote_code, reward_type=self.reward_type,
            reward_options=json.loads(self.reward_options))


# The decoder's settings by the option that sets them (``max_tokens`` sets ``max_new_tokens``).
OPTION_NAMES = {"max_new_tokens": "max_tokens", "draft_sampling.temperature": "temperature",
                "target_sampling.temperature": "temperature", "draft_sampling.top_p": "top_p",
                "target_sampling.top_p": "top_p"}

# The ``rsd`` command's flags for the options it takes (``dest`` is the option's name).
CLI_FLAGS: dict[str, tuple[str, ...]] = {
    "draft_model": ("--draft",), "model": ("--target",), "reward_model": ("--reward",),
    "reward_type": ("--reward-type",), "reward_options": ("--reward-option",), "device_map": ("--device-map",),
    "dtype": ("--dtype",), "trust_remote_code": ("--trust-remote-code",),
    "threshold": ("--threshold", "--delta"), "weighting": ("--weighting",), "max_tokens": ("--max-new-tokens",),
    "max_steps": ("--max-steps",), "max_step_tokens": ("--max-step-tokens",), "temperature": ("--temperature",),
    "top_p": ("--top-p",), "seed": ("--seed",),
}
# Where a field's description speaks in the integrations' terms, the command's own words.
_CLI_HELP = {"model": "target model id or path", "max_tokens": "new tokens per reply"}
_MODEL_FIELDS = ("draft_model", "model", "reward_model", "reward_type", "reward_options", "device_map", "dtype",
                 "trust_remote_code")


class RSDOptions(BaseModel):
    """Which models, and how each call runs: the options of ``ChatRSD``, ``RSDLLM`` and the ``rsd`` command.

    Example:
        >>> opts = RSDOptions(model="Qwen/Qwen2.5-Math-7B-Instruct", draft_model="Qwen/Qwen2.5-Math-1.5B-Instruct",
        ...                   reward_model="Qwen/Qwen2.5-Math-PRM-7B", threshold=0.7)
        >>> opts.model_spec().reward, opts.to_config(RSDConfig(), temperature=0.6).draft_sampling.temperature
        ('Qwen/Qwen2.5-Math-PRM-7B', 0.6)
    """

    model: str | None = Field(default=None, description="target model id or path (None, with no draft_model: "
                                                        "the toy trio)")
    draft_model: str | None = Field(default=None, description="draft model id or path")
    reward_model: str | None = Field(default=None, description="PRM id or path")
    reward_type: str | None = Field(default=None, description="the PRM's family, where it cannot be detected")
    reward_options: dict[str, Any] = Field(
        default_factory=dict, description="options of the reward family's format (e.g. step_token='\\n\\n' for "
                                          "Skywork's PRM as the RSD paper ran it)")
    threshold: float = Field(0.7, ge=0.0, le=1.0, description="δ: a draft step scored below it is rewritten")
    weighting: WeightingName = Field("binary", description="ω: binary, constant, clip, sigmoid or logistic")
    temperature: float = Field(0.0, ge=0.0, description="sampling of both models (0 = greedy)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling of both models")
    seed: int | None = Field(default=None, ge=0, le=2**62, description="makes sampling repeatable")
    max_tokens: int | None = Field(512, ge=1, description="new tokens per reply (None: the decoder's budget)")
    stop: list[str] | None = None
    max_steps: int = Field(64, ge=1, description="reasoning steps per reply")
    max_step_tokens: int = Field(256, ge=1, description="tokens per step")
    device_map: str | None = Field(default=None, description="as in transformers (e.g. auto, cuda:0, cpu)")
    dtype: str | None = Field("auto", description="auto, bfloat16, float16 or float32")
    trust_remote_code: bool = Field(False, description="run code shipped with a checkpoint")
    timeout: float | None = Field(default=None, gt=0, description="seconds a call waits for its result, then "
                                                                  "TimeoutError and the run stops (None: no limit)")
    max_retries: int = Field(0, ge=0, description="retries of a call that failed with CUDA out-of-memory, "
                                                  "after freeing the cache")

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:  # one line that names the option, the value and the rule
            raise OptionError(_problems(e), f"{type(self).__name__}: ") from None
        try:
            self.check_models()
        except OptionError as e:
            raise e.respelled(python_spelling, f"{type(self).__name__}: ") from None

    def check_models(self, threshold: float | None = None) -> None:
        """The models named go together: a target with its draft (or neither: the toy trio), and a reward
        model wherever rewards decide (a threshold strictly between 0 and 1; ``threshold``: a call's own)."""
        if (self.draft_model is None) != (self.model is None):
            missing = "draft_model" if self.draft_model is None else "model"
            raise OptionError([(missing, UNSET, "name both {draft_model} and {model} (or neither, for the "
                                                "embedded toy models)")])
        t = self.threshold if threshold is None else threshold
        if self.draft_model is not None and self.reward_model is None and 0.0 < t < 1.0:
            raise OptionError([("reward_model", UNSET, f"threshold {t} needs a reward model to judge the draft's "
                                                       "steps: name one (and {reward_type} if its family cannot be "
                                                       "detected), or use {threshold} 0 (draft only) or 1 (target "
                                                       "only)")])

    # The options one call may override (``llm.invoke(..., temperature=0.5)``); tools and stop strings too.
    CALL_OPTIONS: ClassVar[frozenset[str]] = frozenset(
        {"temperature", "top_p", "max_tokens", "threshold", "weighting", "seed", "stop", "tools", "tool_choice"})

    def check_call(self, call: dict[str, Any], also: Iterable[str] = ()) -> None:
        """Refuse a call's keyword that is not an option a call can set (nor one of ``also``, the
        framework's own), naming it: a typo such as ``temprature=`` fails instead of being ignored."""
        unknown = set(call) - self.CALL_OPTIONS - set(also)
        if unknown:
            raise TypeError(f"{type(self).__name__} calls do not take {sorted(unknown)}; a call can set "
                            f"{', '.join(sorted(self.CALL_OPTIONS))}")

    @property
    def model_id(self) -> str:
        return self.model or "rsd-toy-target"

    def model_spec(self) -> ModelSpec:
        """The models these options name (what a shared decoder is keyed by)."""
        return ModelSpec(self.model, self.draft_model, self.reward_model, self.reward_type, self.device_map,
                         self.dtype, self.trust_remote_code, json.dumps(self.reward_options, sort_keys=True))

    def to_config(self, base: RSDConfig, **call: Any) -> RSDConfig:
        """``base`` with these options, and one call's (``temperature=``, ``max_tokens=``, ...) over them.

        A bad value is an ``OptionError`` naming the option as passed (``max_tokens=0``).
        """
        sampling = {"temperature": call.get("temperature", self.temperature), "top_p": call.get("top_p", self.top_p)}
        max_tokens = call.get("max_tokens", self.max_tokens)
        updates = {"threshold": call.get("threshold", self.threshold), "weighting": call.get("weighting", self.weighting),
                   "max_new_tokens": base.max_new_tokens if max_tokens is None else max_tokens,
                   "max_steps": self.max_steps, "max_step_tokens": self.max_step_tokens,
                   "draft_sampling": sampling, "target_sampling": sampling, "seed": call.get("seed", self.seed)}
        try:
            config = RSDConfig.model_validate(base.model_dump() | updates)
        except ValidationError as e:
            raise OptionError(_problems(e, OPTION_NAMES)[:1]) from None
        if "threshold" in call:
            self.check_models(config.threshold)
        return config

    # ----------------------------------------------------------------------------- the rsd command's flags

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, **defaults: Any) -> None:
        """The model and decoding flags of the ``rsd`` command (``CLI_FLAGS``), typed, described and
        defaulted by these fields (``defaults`` overrides a field's default for the command)."""
        groups = {True: parser.add_argument_group("models (default: the embedded toy trio)"),
                  False: parser.add_argument_group("decoding")}
        for name, flags in CLI_FLAGS.items():
            info = cls.model_fields[name]
            default = defaults.get(name, info.get_default(call_default_factory=True))
            kw: dict[str, Any] = {"dest": name, "help": _CLI_HELP.get(name, info.description)}
            if name == "reward_options":
                kw |= {"action": "append", "default": [], "metavar": "KEY=VALUE",
                       "help": f"{info.description}; VALUE as JSON or plain text; repeatable"}
            elif info.annotation is bool:
                kw |= {"action": "store_true"}
            else:
                kind = _scalar(info.annotation)
                kw |= {"default": default, "type": kind if kind in (int, float) else str,
                       "metavar": flags[0].removeprefix("--").replace("-", "_").upper()}
                if typing.get_origin(kind) is typing.Literal:
                    kw["choices"] = list(typing.get_args(kind))
            groups[name in _MODEL_FIELDS].add_argument(*flags, **kw)

    @classmethod
    def from_arguments(cls, a: argparse.Namespace) -> RSDOptions:
        """The options the ``rsd`` command was given; a bad value is an ``OptionError`` naming its flag."""
        values = {name: getattr(a, name) for name in CLI_FLAGS}
        try:
            values["reward_options"] = _key_values(values["reward_options"])
            return cls(**values)
        except OptionError as e:
            raise e.respelled(flag_spelling) from None


def flag_spelling(name: str, value: Any) -> str:
    """An option as the ``rsd`` command spells it (``--threshold 1.5``; ``--reward`` when not given)."""
    flag = CLI_FLAGS.get(name, (name,))[0]
    return flag if value is UNSET else f"{flag} {value!r}"


def _scalar(annotation: Any) -> Any:
    """``int`` for ``int | None``; the annotation itself where it is not an optional."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [t for t in typing.get_args(annotation) if t is not type(None)]
        return args[0] if len(args) == 1 else str
    return annotation


def _key_values(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise OptionError([("reward_options", pair, "takes KEY=VALUE")])
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out
