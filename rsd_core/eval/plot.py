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
    labels = []
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
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        labels.append((ax, sorted(groups)))
    axes[0].set_ylabel("accuracy")
    fig.suptitle(f"Accuracy vs compute: {data.get('dataset', '?')} (n={data.get('n', '?')})")
    fig.tight_layout()  # the panels' final size first: labels are placed where they will be seen
    for ax, groups in labels:
        _label(fig, ax, groups)
    return fig


# Where a label may go, in order of preference: (dx, dy) in points from its point, and its alignment.
_SPOTS = [(5, 4, "left", "bottom"), (-5, 4, "right", "bottom"), (5, -4, "left", "top"), (-5, -4, "right", "top"),
          (0, 9, "center", "bottom"), (0, -9, "center", "top"), (5, 16, "left", "bottom"), (-5, 16, "right", "bottom"),
          (5, -16, "left", "top"), (-5, -16, "right", "top"), (0, 24, "center", "bottom"), (0, -24, "center", "top")]


def _label(fig: Any, ax: Any, groups: list[tuple[float, float, list[str]]]) -> None:
    """Label each group of nearby points once, at the first spot where the label covers no other label,
    no point and stays inside the panel (measured on the drawn figure)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    points = [ax.transData.transform((x, y)) for x, y, _ in groups]
    taken: list[Any] = []  # boxes of the labels placed so far
    for x, y, names in groups:
        text = _names(names)
        for dx, dy, ha, va in _SPOTS:
            t = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=8, ha=ha, va=va)
            box = t.get_window_extent(renderer).expanded(1.04, 1.1)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            covers_point = any(box.x0 - 4 <= qx <= box.x1 + 4 and box.y0 - 4 <= qy <= box.y1 + 4
                               for qx, qy in points)
            if inside and not covers_point and not any(box.overlaps(o) for o in taken):
                taken.append(box)
                break
            t.remove()
        else:  # nowhere free: the first spot, as before
            t = ax.annotate(text, (x, y), textcoords="offset points", xytext=_SPOTS[0][:2], fontsize=8,
                            ha=_SPOTS[0][2], va=_SPOTS[0][3])
            taken.append(t.get_window_extent(renderer))


def _names(methods: list[str]) -> str:
    """One label for a group of points: ``RSD δ=0.3, 0.5``; the baselines keep their names."""
    deltas = [m[4:] for m in methods if m.startswith("rsd:")]
    rest = [("RSD" if m == "rsd" else m) for m in methods if not m.startswith("rsd:")]
    return ", ".join(rest + ([f"RSD δ={', '.join(deltas)}"] if deltas else []))


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
