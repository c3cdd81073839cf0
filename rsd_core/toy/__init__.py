"""The embedded default: a toy arithmetic task and a trained draft / target / PRM trio shipped in the package."""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"


def toy_model_paths() -> dict[str, str]:
    """Local paths of the shipped toy models (``draft``, ``target``, ``prm``), loadable with ``from_pretrained``."""
    paths = {name: WEIGHTS_DIR / name for name in ("draft", "target", "prm")}
    missing = [str(p) for p in paths.values() if not (p / "config.json").is_file()]
    if missing:
        raise FileNotFoundError(
            f"the toy models are missing ({', '.join(missing)}); rebuild them with "
            "`python -m rsd_core.toy.train --out rsd_core/toy/weights`"
        )
    return {k: str(v) for k, v in paths.items()}
