"""Where a checkpoint's files are: a local folder, or the Hugging Face hub through ``huggingface_hub``.

A hub id behaves like a local path: its small files (config, tokenizer, weight index, remote code)
come from the hub cache (``HF_HUB_CACHE``, a ``revision``, ``HF_HUB_OFFLINE``) exactly as transformers
would find them, so detection and loading read the same files.

Example:
    >>> folder = metadata_dir("Qwen/Qwen2.5-Math-PRM-7B")          # doctest: +SKIP
    >>> read_config("Qwen/Qwen2.5-Math-PRM-7B")["architectures"]   # doctest: +SKIP
    ['Qwen2ForProcessRewardModel']
"""

from __future__ import annotations

import functools
import json
import os
import socket
import urllib.parse
from pathlib import Path
from typing import Any

from rsd_core.errors import ModelLoadError

# The files detection and the tokenizer need; weights are left to transformers' own download.
METADATA_PATTERNS = ["*.json", "*.model", "*.txt", "*.py", "*.jinja", "*.tiktoken"]


def looks_like_path(name: str) -> bool:
    """A name that can only be a local path (a hub id is ``name`` or ``org/name``)."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or "\\" in name


def canonical_name(name_or_path: str) -> str:
    """One name per checkpoint: a local path resolved (``p``, ``p/``, ``p/.`` and ``../x/p`` are one folder),
    a hub id as given."""
    local = Path(name_or_path).expanduser()
    return str(local.resolve()) if local.exists() else name_or_path


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=4)
def _reachable(endpoint: str, timeout: float = 3.0) -> bool:
    url = urllib.parse.urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_unreachable() -> bool:
    """The hub's endpoint cannot be reached (checked once per process, a few seconds at most): hub ids
    then come from the cache alone, instead of a minute of retries before the same answer."""
    if hub_offline():
        return False
    from huggingface_hub import constants

    return not _reachable(constants.ENDPOINT)


def metadata_dir(name_or_path: str, revision: str | None = None) -> Path:
    """A folder holding the checkpoint's config and tokenizer files: the path itself, or its hub snapshot."""
    local = Path(name_or_path).expanduser()
    if local.exists():
        return local
    if looks_like_path(name_or_path):
        raise ModelLoadError(f"{name_or_path!r}: no such file or directory (a hub id has the form 'org/name')")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    unreachable = hub_unreachable()
    try:
        return Path(snapshot_download(name_or_path, revision=revision, allow_patterns=METADATA_PATTERNS,
                                      local_files_only=unreachable))
    except LocalEntryNotFoundError as e:
        if hub_offline():
            hint = f"it is not in the hub cache (HF_HUB_OFFLINE is set) ({e})"
        elif unreachable:
            hint = "the hub cannot be reached and it is not in the hub cache; set HF_HUB_OFFLINE=1 to skip the check"
        else:
            hint = f"the hub cannot be reached and it is not in the hub cache; set HF_HUB_OFFLINE=1 to fail fast ({e})"
        raise ModelLoadError(f"cannot find checkpoint {name_or_path!r}: {hint}") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise ModelLoadError(f"cannot find checkpoint {name_or_path!r} on the hub: {e}") from None


def read_config(name_or_path: str, revision: str | None = None) -> dict[str, Any]:
    """The checkpoint's ``config.json`` as a dict (a clear error if it has none or it is damaged)."""
    return config_in(metadata_dir(name_or_path, revision), name_or_path)


def config_in(folder: Path, name_or_path: str) -> dict[str, Any]:
    """``config.json`` of a checkpoint folder already found (``metadata_dir``)."""
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise ModelLoadError(f"{name_or_path!r} has no config.json: it is not a transformers checkpoint")
    try:
        data: dict[str, Any] = json.loads(cfg.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{str(cfg)!r} is not valid JSON ({e}): the checkpoint is damaged") from None
    return data


def weight_names(folder: Path) -> list[str]:
    """The weight names a checkpoint folder declares: from its index, or the headers of the weight files
    it holds (safetensors headers, or the keys of a ``.bin`` read with ``weights_only=True``, memory-mapped)."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            return list(json.loads((folder / index).read_text())["weight_map"])
    names: list[str] = []
    for f in sorted(folder.glob("*.safetensors")):
        from safetensors import safe_open

        with safe_open(str(f), framework="pt") as st:
            names += list(st.keys())
    if names:
        return names
    for f in sorted(folder.glob("*.bin")):
        import torch

        try:
            names += list(torch.load(str(f), map_location="meta", weights_only=True, mmap=True))
        except Exception:  # a damaged or foreign file: detection falls through to other evidence
            continue
    return names


def vocabulary_has(folder: Path, token: str) -> bool:
    """Whether the checkpoint's tokenizer (``tokenizer.json``, or a SentencePiece ``tokenizer.model``) has ``token``."""
    tj = folder / "tokenizer.json"
    if tj.is_file():
        text = tj.read_text(encoding="utf-8")
        return json.dumps(token) in text or json.dumps(token, ensure_ascii=False) in text
    sp = folder / "tokenizer.model"
    if sp.is_file():
        # SentencePiece stores its pieces as UTF-8 strings in a protobuf: the bytes are there as written.
        return token.encode("utf-8") in sp.read_bytes()
    return False


def needs_sentencepiece(folder: Path) -> bool:
    """A tokenizer that ships only as a SentencePiece model (no ``tokenizer.json``)."""
    return (folder / "tokenizer.model").is_file() and not (folder / "tokenizer.json").is_file()
