"""Value-head PRMs: Skywork-o1-Open-PRM-Qwen-2.5-1.5B / -7B.

A Qwen2 backbone plus a linear value head (``v_head``). Input: bos + question + ``"\\n"``, then each step's
tokens followed by the step separator (``"\\n"``); the reward of a step is the sigmoid of the value at its
separator. Loaded with plain transformers: the backbone with ``AutoModel`` and the ``v_head.*`` weights
read from the checkpoint's safetensors, so no remote code runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import AutoModel
from transformers.modeling_outputs import TokenClassifierOutput

from rsd_core.backends.hf import load_pretrained, pop_load_kwargs
from rsd_core.errors import ModelLoadError
from rsd_core.rewards.base import Conversation, question_of
from rsd_core.rewards.incremental import IncrementalPRM, token_id


class ValueHeadModel(torch.nn.Module):
    """Backbone + value head, with the causal-LM call signature (``logits`` = values, [B, T, 1])."""

    def __init__(self, backbone: Any, v_head: torch.nn.Linear):
        super().__init__()
        self.backbone, self.v_head = backbone, v_head
        self.config = backbone.config

    def get_input_embeddings(self) -> Any:
        return self.backbone.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> TokenClassifierOutput:
        hidden = self.backbone(input_ids=input_ids, **kwargs).last_hidden_state
        return TokenClassifierOutput(logits=self.v_head(hidden.to(self.v_head.weight.dtype)))


def _checkpoint_files(path: str) -> list[Path]:
    local = Path(path)
    if not local.is_dir():
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(path, allow_patterns=["*.safetensors", "*.json"]))
    index = local / "model.safetensors.index.json"
    if index.is_file():
        return sorted({local / f for f in json.loads(index.read_text())["weight_map"].values()})
    return sorted(local.glob("*.safetensors"))


def load_v_head(path: str, hidden: int) -> torch.nn.Linear:
    """The value head's weights, under ``v_head.summary.*`` (TRL style) or ``v_head.*``."""
    tensors: dict[str, torch.Tensor] = {}
    for f in _checkpoint_files(path):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                if k.startswith("v_head."):
                    tensors[k.removeprefix("v_head.").removeprefix("summary.")] = st.get_tensor(k)
    if "weight" not in tensors:
        raise ModelLoadError(f"{path!r} has no v_head.* weights in its safetensors: not a value-head PRM "
                             "(choose another reward_type)")
    w = tensors["weight"].reshape(-1, hidden)
    head = torch.nn.Linear(hidden, w.shape[0], bias="bias" in tensors)
    with torch.no_grad():
        head.weight.copy_(w)
        if "bias" in tensors:
            head.bias.copy_(tensors["bias"].reshape(-1))
    return head


class ValueHeadPRM(IncrementalPRM):
    def __init__(self, model: Any, tokenizer: Any, step_separator: str = "\n", name: str | None = None):
        super().__init__(model, tokenizer, name)
        self.sep_id = token_id(tokenizer, step_separator, "the step separator")

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> ValueHeadPRM:
        load_kw = pop_load_kwargs(kwargs)
        load_kw["trust_remote_code"] = False  # the head is read as plain weights
        backbone, tok = load_pretrained(AutoModel, name_or_path, **load_kw)
        head = load_v_head(name_or_path, backbone.config.hidden_size)
        head = head.to(device=backbone.get_input_embeddings().weight.device,
                       dtype=backbone.get_input_embeddings().weight.dtype)
        return cls(ValueHeadModel(backbone, head).eval(), tok, name=name_or_path, **kwargs)

    def header_ids(self, conversation: Conversation) -> list[int]:
        bos = self.tokenizer.bos_token or ""
        return self.encode(bos + question_of(conversation) + "\n")

    def step_ids(self, step: str, index: int) -> list[int]:
        return self.encode(step.strip()) + [self.sep_id]

    def reward_from(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits[:, 0])
