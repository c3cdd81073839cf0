"""Plots of an evaluation summary (``rsd eval --out DIR`` writes ``DIR/summary.json``).

- ``accuracy_vs_flops.png``: accuracy against FLOPs per question for every method, one panel per
  FLOPs count (the paper's: generated tokens only; the full one: every token read or written);
- ``delta_sweep.png``: accuracy and the share of steps the target wrote against δ, for the
  ``rsd:δ`` runs, with target-only and draft-only as reference lines.

Example:
    >>> paths = plot_summary("runs/toy/summary.json", "runs/toy")   # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _load(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no summary at {path} (rsd eval --out DIR writes DIR/summary.json)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON ({e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("methods"), list):
        raise ValueError(f"{path} is not an rsd eval summary (no 'methods' list)")
    return data


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("rsd plot needs matplotlib: pip install 'rsd[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_summary(summary_path: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the PNGs for one summary into ``out_dir``; returns their paths."""
    data = _load(summary_path)
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = data["methods"]
    title = f"{data.get('dataset', '?')} (n={data.get('n', '?')})"
    written = [_save(plt, accuracy_figure(plt, data), out / "accuracy_vs_flops.png")]

    sweep = sorted((r for r in rows if r["method"].startswith("rsd") and r.get("delta") is not None),
                   key=lambda r: r["delta"])
    if sweep:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        d = [r["delta"] for r in sweep]
        ax.plot(d, [r["accuracy"] for r in sweep], "o-", color="C0", label="RSD accuracy")
        ax.plot(d, [r.get("target_step_rate") or 0.0 for r in sweep], "s--", color="C3",
                label="share of steps the target wrote")
        for name, style in (("target", ":"), ("draft", "-.")):
            ref = next((r for r in rows if r["method"] == name), None)
            if ref:
                ax.axhline(ref["accuracy"], linestyle=style, color="gray", label=f"{name}-only accuracy")
        ax.set_xlabel("δ (threshold)")
        ax.set_xlim(-0.02, 1.02)  # δ lives in [0, 1]: one δ is a point in that range, not the whole axis
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        ax.set_title(f"δ sweep: {title}")
        written.append(_save(plt, fig, out / "delta_sweep.png"))
    return written


def accuracy_figure(plt: Any, data: dict[str, Any]) -> Any:
    """Accuracy against FLOPs per question, one panel per FLOPs count, each point labelled once."""
    rows = data["methods"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, label in ((axes[0], "paper_flops_per_question", "FLOPs per question (paper: generated tokens)"),
                           (axes[1], "flops_per_question", "FLOPs per question (full: every token read/written)")):
        groups: list[tuple[float, float, list[str]]] = []  # nearby points share one label
        for r in rows:
            x = r.get(key) or 0.0
            if x <= 0:
                continue
            rsd = r["method"].startswith("rsd")
            ax.scatter([x], [r["accuracy"]], s=50, marker="o" if rsd else "s", color="C0" if rsd else "C1", zorder=3)
            near = next((g for g in groups if abs(g[0] / x - 1) < 0.04 and abs(g[1] - r["accuracy"]) < 0.01), None)
            if near:
                near[2].append(r["method"])
            else:
                groups.append((x, r["accuracy"], [r["method"]]))
        sweep = sorted((r for r in rows if r["method"].startswith("rsd") and r.get(key)), key=lambda r: r[key])
        if len(sweep) > 1:
            ax.plot([r[key] for r in sweep], [r["accuracy"] for r in sweep], color="C0", alpha=0.5)
        ax.set_xscale("log")
        ax.margins(x=0.12, y=0.15)
        lo, hi = ax.get_xlim()
        mid = (lo * hi) ** 0.5
        stack = 0  # neighbouring RSD labels climb, so they never print over each other
        for x, y, names in sorted(groups):
            rsd = names[0].startswith("rsd")
            text = ", ".join(_short(n) for n in names)
            dy = (4 + 11 * (stack % 3)) if rsd else -12
            stack += rsd
            right = x > mid  # labels right of the middle end at their point: none is cut at the edge
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(-5 if right else 5, dy), fontsize=8,
                        ha="right" if right else "left")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    fig.suptitle(f"Accuracy vs compute: {data.get('dataset', '?')} (n={data.get('n', '?')})")
    return fig


def _short(method: str) -> str:
    """``rsd:0.7`` -> ``RSD δ=0.7``; the baselines keep their names."""
    if method.startswith("rsd:"):
        return f"RSD δ={method[4:]}"
    return "RSD" if method == "rsd" else method


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
