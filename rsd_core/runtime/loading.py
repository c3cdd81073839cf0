"""Loading a model and its tokenizer exactly as transformers does, with errors a user can act on.

One place for it: every backend and every reward family loads through ``load_pretrained``. A loaded
model never runs with a weight it did not find in the checkpoint: a missing or mismatched weight (a
head the checkpoint names differently, a truncated file) is a ``ModelLoadError`` naming the weights,
never a randomly initialised layer.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel

from rsd_core.errors import ModelLoadError
from rsd_core.runtime.checkpoints import config_in, hub_unreachable, metadata_dir, needs_sentencepiece
from rsd_core.runtime.templates import check_chat_template

LOAD_OPTIONS = ("device_map", "dtype", "trust_remote_code", "revision")


def resolve_dtype(dtype: str | torch.dtype | None, device_map: Any) -> str | torch.dtype:
    """``"auto"`` keeps the checkpoint's dtype on accelerators but uses fp32 on CPU (fp16 is slow there)."""
    if dtype in (None, "auto"):
        on_cpu = device_map in (None, "cpu") or (isinstance(device_map, torch.device) and device_map.type == "cpu")
        return torch.float32 if on_cpu else "auto"
    if isinstance(dtype, str):
        try:
            return getattr(torch, dtype) if dtype != "auto" else dtype
        except AttributeError:
            raise ValueError(f"unknown dtype {dtype!r}: use 'auto', 'float32', 'bfloat16' or 'float16'") from None
    return dtype


def pop_load_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take the ``from_pretrained`` options (device_map, dtype, trust_remote_code, revision) out of ``kwargs``."""
    return {k: kwargs.pop(k) for k in LOAD_OPTIONS if k in kwargs}


def require_gguf(name: str) -> None:
    """transformers reads GGUF through the ``gguf`` package: say so before it fails deep inside."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(f"{name!r} is a GGUF checkpoint: install the 'gguf' package to load it (pip install gguf)")


def require_sentencepiece(name: str, folder: Path) -> None:
    """A tokenizer shipped only as ``tokenizer.model`` is converted by transformers with sentencepiece and
    protobuf; without them it falls back to another parser and fails on the binary file."""
    if not needs_sentencepiece(folder):
        return
    missing = [pkg for pkg, mod in (("sentencepiece", "sentencepiece"), ("protobuf", "google.protobuf"))
               if _missing_module(mod)]
    if missing:
        raise ModelLoadError(f"{name!r} ships its tokenizer only as a SentencePiece tokenizer.model: install "
                             f"{' and '.join(missing)} to load it (pip install 'rsd[sentencepiece]')")


def _missing_module(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is None
    except ModuleNotFoundError:
        return True


# Far past any released model; a config beyond these is damaged or hostile (building it would hang or exhaust memory).
SIZE_LIMITS = {"num_hidden_layers": 1024, "hidden_size": 65536, "intermediate_size": 1 << 20,
               "num_attention_heads": 1024, "num_key_value_heads": 1024, "vocab_size": 1 << 23,
               "max_position_embeddings": 1 << 24, "num_labels": 1 << 16}
MAX_PARAMETERS = 5e12


def check_config_sizes(name: str, config: dict[str, Any]) -> None:
    """Refuse sizes no model has before anything is built (``num_hidden_layers: 10**7`` would hang)."""
    cfg = dict(config.get("text_config") or {}) | config
    for key, limit in SIZE_LIMITS.items():
        v = cfg.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= limit):
            raise ModelLoadError(f"{name!r}: config.json says {key}={v!r}, beyond what any model has (at most "
                                 f"{limit}); the checkpoint is damaged or not a model")
    h, layers = int(cfg.get("hidden_size") or 0), int(cfg.get("num_hidden_layers") or 0)
    inter, vocab = int(cfg.get("intermediate_size") or 4 * h), int(cfg.get("vocab_size") or 0)
    params = layers * (4 * h * h + 3 * h * inter) + 2 * vocab * h
    if params > MAX_PARAMETERS:
        raise ModelLoadError(f"{name!r}: config.json describes about {params:.2e} parameters, more than any "
                             "machine holds; the checkpoint is damaged or not a model")


def check_tokenizer(name: str, tok: Any) -> None:
    """A tokenizer that cannot write ordinary text (a 4-token vocabulary from a ``tokenizer_file`` pointing
    elsewhere) would generate nothing without a word of why."""
    sample = "Ann has 12 apples."
    try:
        ids = tok(sample, add_special_tokens=False).input_ids
        text = tok.decode(ids, skip_special_tokens=True)
    except Exception as e:  # a tokenizer that fails on plain text is as broken
        raise ModelLoadError(f"{name!r}: its tokenizer cannot encode plain text ({type(e).__name__}: {e})") from None
    unk = getattr(tok, "unk_token_id", None)
    if not ids or all(i == unk for i in ids) or not any(c.isalnum() for c in text) or len(tok) < 8:
        raise ModelLoadError(f"{name!r}: its tokenizer cannot write plain text ({len(tok)} tokens; {sample!r} "
                             f"encodes to {ids[:12]} and decodes to {text!r}); check its tokenizer files "
                             "(tokenizer.json, tokenizer_config.json's tokenizer_file)")


def head_modules(model: torch.nn.Module) -> set[str]:
    """Top-level modules outside the backbone (``score``, ``v_head``, ``lm_head``...)."""
    prefix = getattr(model, "base_model_prefix", "")
    return {name for name, _ in model.named_children() if name != prefix}


def check_loading_info(name: str, model: torch.nn.Module, info: dict[str, Any]) -> None:
    """Refuse a model that would run with weights the checkpoint did not provide."""
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or [])
    heads = head_modules(model)
    unexpected = sorted(k for k in info.get("unexpected_keys") or [] if k.split(".", 1)[0] in heads)
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if mismatched:
        problems.append(f"of another shape in the checkpoint: {', '.join(mismatched[:8])}")
    if unexpected:
        problems.append(f"in the checkpoint but not in {type(model).__name__}: {', '.join(unexpected[:8])}")
    if problems:
        raise ModelLoadError(
            f"{name!r} does not fit {type(model).__name__}: weights {'; '.join(problems)}. Loading it would "
            "leave those layers randomly initialised; is this the right checkpoint (or reward_type) for this model?")


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No "Loading weights" bars: a load either works or raises a ModelLoadError that says why."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    # The GGUF reader draws its own tqdm bar ("Converting and de-quantizing GGUF tensors"), outside that switch.
    gguf_utils: Any = sys.modules.get("transformers.modeling_gguf_pytorch_utils")
    if gguf_utils is None and importlib.util.find_spec("gguf") is not None:
        gguf_utils = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
        if was:
            hf_logging.enable_progress_bar()


def load_pretrained(
    auto_cls: Any,
    name_or_path: str,
    *,
    device_map: Any = None,
    dtype: str | torch.dtype | None = "auto",
    trust_remote_code: bool = False,
    revision: str | None = None,
    **kwargs: Any,
) -> tuple[PreTrainedModel, Any]:
    """Model and tokenizer exactly as transformers loads them (hub id or local path), with a clear error.

    A local path is checked first and never looked up on the hub (a typo must not turn into a download).
    A hub id goes through ``huggingface_hub`` (its cache, ``revision``, ``HF_HUB_OFFLINE``).
    A local ``.gguf`` file loads as transformers loads GGUF (``gguf_file=``; needs the ``gguf`` package):
    the weights are de-quantized, the tokenizer and chat template come from the file.

    Example:
        >>> model, tok = load_pretrained(AutoModelForCausalLM, "path/to/ckpt")   # doctest: +SKIP
    """
    shown, local = name_or_path, Path(name_or_path).expanduser()
    gguf = local.is_file() and local.suffix == ".gguf"
    if local.exists():
        if gguf:
            name_or_path, kwargs["gguf_file"] = str(local.parent), local.name
        elif local.is_file():
            raise ModelLoadError(f"{shown!r} is a file; a checkpoint is a folder with config.json and weights, "
                                 "or a .gguf file")
        else:
            name_or_path = str(local)
        kwargs.setdefault("local_files_only", True)
    if kwargs.get("gguf_file"):
        require_gguf(shown)
    else:
        folder = metadata_dir(name_or_path, revision)  # a missing local path fails here, never tried on the hub
        if not local.exists() and hub_unreachable():
            kwargs.setdefault("local_files_only", True)  # the cache only: no retries against a hub that is not there
        require_sentencepiece(shown, folder)
        check_config_sizes(shown, config_in(folder, shown))
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision,
                                            local_files_only=kwargs.get("local_files_only", False),
                                            gguf_file=kwargs.get("gguf_file"))
        check_tokenizer(shown, tok)
        check_chat_template(shown, getattr(tok, "chat_template", None))
        with _quiet_loading():
            loaded = auto_cls.from_pretrained(
                name_or_path,
                device_map=device_map,
                dtype=resolve_dtype(dtype, device_map),
                trust_remote_code=trust_remote_code,
                revision=revision,
                use_safetensors=kwargs.pop("use_safetensors", None),
                output_loading_info=True,
                **kwargs,
            )
    except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError) as e:
        # (pickle checkpoints load with weights_only=True: one that holds code fails here, unrun)
        raise ModelLoadError(f"could not load {shown!r} with {auto_cls.__name__}: {e}") from e
    model, info = loaded
    check_loading_info(shown, model, info)
    model.eval()
    return model, tok
