"""CPU benchmark on the embedded toy trio: RSD against target-only, ratios measured in one run.

    python benchmarks/cpu.py --n 100 --batch-size 16 --json out/cpu.json

Prints wall time, tokens and FLOPs per method and the RSD / target-only ratios. Nothing is asserted:
the figures are for reading (CI runs it as a smoke test).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from rsd_core import RewardGuidedDecoder
from rsd_core.eval.datasets import toy_examples
from rsd_core.eval.runner import evaluate, markdown_table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    hf_logging.disable_progress_bar()
    dec = RewardGuidedDecoder.from_pretrained()
    examples = toy_examples(a.n)
    evaluate(dec, examples[: a.batch_size], ["target", "rsd"], batch_size=a.batch_size, progress=False)  # warm-up
    results = {}
    for bs in sorted({1, a.batch_size}):
        summary = evaluate(dec, examples, ["target", "draft", "rsd"], batch_size=bs, progress=False)
        t, r = summary["target"], summary["rsd"]
        ratios = {
            "wall": r["wall_s"] / t["wall_s"],
            "flops_total": r["flops"]["total"] / t["flops"]["total"],
            "target_flops": r["flops"]["target"] / t["flops"]["target"],
            "target_decode_tokens": r["tokens"]["target"]["decode"] / t["tokens"]["target"]["decode"],
        }
        results[f"batch_{bs}"] = {"summary": summary, "rsd_over_target": ratios}
        print(f"\n## batch size {bs}, {a.n} toy problems, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
        print(markdown_table(summary))
        print("RSD / target-only: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
