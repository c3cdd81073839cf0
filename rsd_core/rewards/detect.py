"""Which reward-model family a checkpoint belongs to, from its own files (local path or hub id alike)."""

from __future__ import annotations

from rsd_core.errors import UnknownRewardModelError
from rsd_core.runtime.checkpoints import metadata_dir, read_config, vocabulary_has, weight_names

FAMILY_NAMES = ("chat_prm", "likelihood", "llm_judge", "math_shepherd", "orm", "step_tag", "value_head")


def detect_reward_type(name_or_path: str, revision: str | None = None) -> str:
    """A checkpoint's family, from what it declares (``rsd_reward.type``), its architectures, its weight
    names and its tokenizer's vocabulary.

    Example:
        >>> detect_reward_type("Skywork/Skywork-o1-Open-PRM-Qwen-2.5-1.5B")   # doctest: +SKIP
        'value_head'
    """
    cfg = read_config(name_or_path, revision)
    declared = (cfg.get("rsd_reward") or {}).get("type")
    if declared:
        return str(declared)
    archs = [str(a) for a in cfg.get("architectures") or []]
    if any(a.endswith(("ForTokenClassification", "ForProcessRewardModel")) for a in archs):
        return "step_tag"  # Qwen2ForProcessRewardModel: Qwen2.5-Math-PRM
    if any(a.endswith("ForPrmModel") for a in archs):
        return "value_head"  # Qwen2ForPrmModel: Skywork-o1-Open-PRM
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "orm"
    folder = metadata_dir(name_or_path, revision)
    if any(n.startswith("v_head.") for n in weight_names(folder)):
        return "value_head"
    if any(a.endswith("ForCausalLM") for a in archs) and vocabulary_has(folder, "ки"):
        return "math_shepherd"  # Mistral's vocabulary has the step tag; so does any causal LM built on it
    raise UnknownRewardModelError(
        f"cannot tell which reward-model family {name_or_path!r} belongs to (architectures={archs}). "
        f"Supported: {', '.join(FAMILY_NAMES)}. Pass reward_type=... to choose one (chat_prm and llm_judge "
        "are never guessed), reward='arithmetic', or a Python function (question, previous_steps, step) -> float."
    )
