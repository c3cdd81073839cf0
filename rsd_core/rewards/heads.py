"""Reward heads on a transformers backbone, loaded natively (no remote code) in the checkpoint's own weight layout.

- ``process_reward_head``: Qwen2.5-Math-PRM's ``Qwen2ForProcessRewardModel`` layout: the backbone, then
  ``score = Sequential(Linear(hidden, hidden), ReLU(), Linear(hidden, num_labels))``, so the weights
  are ``score.0.*`` and ``score.2.*``; the output is [B, T, num_labels] logits at every token.
- ``value_head``: Skywork-o1-Open-PRM's ``Qwen2ForPrmModel`` layout (TRL's value head): the backbone,
  then ``v_head.summary = Linear(hidden, 1)``; the output is [B, T, 1] values. Its checkpoint also
  holds the language-model head it was trained from (``lm_head.*``), which scoring never reads.

Both are built for the checkpoint's backbone (Qwen2, Llama, Mistral, ... whatever ``AutoModel`` maps
its config to) and loaded through ``from_pretrained``: safetensors or ``.bin``, sharded or not, hub or
local. A head weight the checkpoint lacks is a load error (``runtime/loading.py``), never a random head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import TokenClassifierOutput

from rsd_core.errors import ModelLoadError
from rsd_core.runtime.cached_model import cache_kwarg


def _backbone_class(config: PretrainedConfig, what: str) -> type[PreTrainedModel]:
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        cls: type[PreTrainedModel] = MODEL_MAPPING[type(config)]  # type: ignore[assignment]
        return cls
    except KeyError:
        raise ModelLoadError(f"no transformers backbone for model_type {config.model_type!r}, so the {what} cannot "
                             "be loaded natively; pass trust_remote_code=True to use the checkpoint's own class") from None


class _HeadMixin:
    """A backbone (under the family's own prefix, ``model``) and one head, with the causal-LM call signature."""

    base_model_prefix: str
    _cache_kw: str  # the backbone's name for its KV cache, looked up once

    def get_input_embeddings(self) -> nn.Module:
        return getattr(self, self.base_model_prefix).get_input_embeddings()

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: Any = None, past_key_values: Any = None,
                inputs_embeds: torch.Tensor | None = None, use_cache: bool | None = None, logits_to_keep: int = 0,
                **kwargs: Any) -> TokenClassifierOutput:
        backbone = getattr(self, self.base_model_prefix)
        kv = cache if cache is not None else past_key_values
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          inputs_embeds=inputs_embeds, use_cache=use_cache, **{self._cache_kw: kv},
                          **kwargs).last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return TokenClassifierOutput(logits=self.head_forward(hidden))

    def head_forward(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # set per head by _with_head


class _ValueHead(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.summary = nn.Linear(hidden, 1)


def _with_head(config: PretrainedConfig, what: str, head_name: str, build: Any, run: Any,
               ignore_unexpected: list[str]) -> type[PreTrainedModel]:
    backbone_cls = _backbone_class(config, what)
    base = backbone_cls.__mro__[1]  # the family's *PreTrainedModel: its weight init and base_model_prefix

    def __init__(self: Any, cfg: PretrainedConfig) -> None:
        base.__init__(self, cfg)  # type: ignore[misc]  # the family's base, as its own classes call it
        setattr(self, self.base_model_prefix, backbone_cls(cfg))
        self._cache_kw = cache_kwarg(getattr(self, self.base_model_prefix))
        setattr(self, head_name, build(cfg))
        self.post_init()

    body = {"__init__": __init__, "head_forward": run, "_keys_to_ignore_on_load_unexpected": ignore_unexpected}
    name = f"{backbone_cls.__name__.removesuffix('Model')}{what.title().replace(' ', '')}"
    return type(name, (_HeadMixin, base), body)


def process_reward_head(config: PretrainedConfig) -> type[PreTrainedModel]:
    """The class that loads a Qwen2.5-Math-PRM-style checkpoint (``score.0``/``score.2``) natively."""
    labels = int(getattr(config, "num_labels", 2) or 2)

    def build(cfg: PretrainedConfig) -> nn.Module:
        h = cfg.hidden_size
        return nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, labels))

    def run(self: Any, hidden: torch.Tensor) -> torch.Tensor:
        return self.score(hidden)

    return _with_head(config, "process reward head", "score", build, run, [r"^lm_head\."])


def value_head(config: PretrainedConfig) -> type[PreTrainedModel]:
    """The class that loads a Skywork-o1-Open-PRM-style checkpoint (``v_head.summary``) natively."""

    def run(self: Any, hidden: torch.Tensor) -> torch.Tensor:
        summary = self.v_head.summary
        return summary(hidden.to(summary.weight.dtype))

    return _with_head(config, "value head", "v_head", lambda cfg: _ValueHead(cfg.hidden_size), run, [r"^lm_head\."])


# TRL's older layout writes the head as ``v_head.weight``/``v_head.bias``: read them as the summary layer.
VALUE_HEAD_KEY_MAPPING = {r"^v_head\.(weight|bias)$": r"v_head.summary.\1"}
