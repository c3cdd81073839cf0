"""Shared fixtures: tiny random-weight models (mechanics) and the shipped toy trio (the method's effect)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import Qwen2ForCausalLM, Qwen2ForTokenClassification

from rsd_core.toy.task import make_problem
from rsd_core.toy.tokenizer import train_tokenizer

from tiny_models import tiny_config


@pytest.fixture(scope="session")
def toy():
    """The shipped toy trio, loaded once per test session."""
    from rsd_core.decoder import RewardGuidedDecoder

    return RewardGuidedDecoder.from_pretrained()


@pytest.fixture(scope="session")
def toy_tokenizer():
    rng = random.Random(7)
    corpus = []
    for _ in range(500):
        p = make_problem(rng)
        corpus.append(f"<|im_start|>user\n{p.question}<|im_end|>\n<|im_start|>assistant\n{p.solution}")
    return train_tokenizer(corpus)


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory, toy_tokenizer) -> dict[str, str]:
    """Random-weight draft / target / PRM saved like real checkpoints (fp32, safetensors)."""
    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for name, seed, hidden, cls, extra in (
        ("draft", 1, 32, Qwen2ForCausalLM, {}),
        ("target", 2, 48, Qwen2ForCausalLM, {}),
        ("prm", 3, 32, Qwen2ForTokenClassification, {"num_labels": 2}),
    ):
        torch.manual_seed(seed)
        model = cls(tiny_config(toy_tokenizer, hidden=hidden, **extra))
        if cls is Qwen2ForCausalLM:
            with torch.no_grad():  # random weights rarely end a step: make the delimiter likelier
                model.lm_head.weight[toy_tokenizer.convert_tokens_to_ids("\n\n")] *= 4.0
        if extra:
            model.config.rsd_reward = {"type": "step_tag", "system_prompt": None}
        path = Path(root) / name
        model.save_pretrained(path)
        toy_tokenizer.save_pretrained(path)
        out[name] = str(path)
    return out
