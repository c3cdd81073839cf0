"""GPU benchmark: per-token decode speed and RSD wall time on Qwen2.5-Math-1.5B/7B-shaped models.

    python benchmarks/gpu.py --json out/gpu.json

Random bf16 weights, built on the GPU from the public shapes (no download). Prints one table, last:

- ms/token at batch 1 for each model: transformers ``generate`` eager, static cache, ours (the fast path:
  CUDA graphs over transformers' modules), the native engine's host loop (eager), its device loop (each
  token one CUDA graph, or four per graph; the step end flagged on the device and polled behind queued
  launches; greedy and T = 0.7) and that loop compiled
  (``--no-compile`` skips it), and the best of ours as a fraction of the bandwidth limit (weight bytes /
  measured copy bandwidth);
- RSD with a 1.5B draft, a 7B target and a 1.5B PRM, 64-token steps, where each step is accepted with a
  fixed probability α (random weights make real rewards meaningless; the PRM still runs, so its cost
  counts): wall time vs target-only on the same prompts, beside the ideal speedup computed from this
  run's own per-token times, on the fast path and (batch 1) on the native device loop; then the fast
  path at larger batches, in problems/s, and the lockstep / no-lockstep comparison on the native engine.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
import zlib
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2ForTokenClassification  # noqa: E402

from rsd_core import RewardGuidedDecoder, RSDConfig  # noqa: E402
from rsd_core.backends.fast import FastCachedModel  # noqa: E402
from rsd_core.backends.hf import HFGenerator  # noqa: E402
from rsd_core.config import SamplingConfig  # noqa: E402
from rsd_core.events import ModelUsage  # noqa: E402
from rsd_core.rewards.base import RewardModel  # noqa: E402
from rsd_core.runtime.device_loop import DeviceLoop  # noqa: E402

SHAPES = {  # Qwen2.5-Math public configs
    "1.5B": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True),
    "7B": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
               intermediate_size=18944, vocab_size=152064, tie_word_embeddings=False),
    "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=512, vocab_size=1024, tie_word_embeddings=True),
}
PROMPT_LEN, STEP, STEPS = 512, 64, 8
NATIVE_VARIANTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [  # (result key, HFGenerator options,
    ("native_ms", dict(device_loop=False), {}),                           #  DeviceLoop options)
    ("native_graph_ms", dict(device_loop=True), {}),
    ("native_graph_k4_ms", dict(device_loop=True), dict(per_launch=4)),  # 4 tokens per graph replay
    ("native_graph_flex_ms", dict(device_loop=True), dict(attention="flex")),  # FlexAttention, own lengths
    ("native_graph_t07_ms", dict(device_loop=True, sampling=SamplingConfig(temperature=0.7)), {}),
    ("native_compiled_ms", dict(device_loop=True, compiled=True), {}),
]
SCHED_STEP = 40  # mean step length in the scheduling comparison
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # CPU only to check the script itself (--quick)


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


class StubTokenizer:
    """Random weights need no real tokenizer: prompts map to seeded random ids, text decodes to ''."""

    pad_token_id, eos_token_id, chat_template, unk_token_id = 0, None, None, None

    def __init__(self, vocab: int, prompt_len: int = PROMPT_LEN, delim_every: int | None = None):
        self.vocab, self.prompt_len, self.delim_every = vocab, prompt_len, delim_every

    def __len__(self) -> int:
        # Like Qwen2.5's tokenizer (151665 tokens), smaller than either embedding: ids past it are padding.
        return min(self.vocab, 151665)

    def __call__(self, text: str, add_special_tokens: bool = True) -> Any:
        rng = random.Random(text)
        return type("Enc", (), {"input_ids": [rng.randrange(1, min(self.vocab, 1000)) for _ in range(self.prompt_len)]})

    def batch_decode(self, seqs: list[list[int]], skip_special_tokens: bool = True) -> list[str]:
        # With ``delim_every`` set, one token in that many spells the step delimiter: sampled steps then
        # end at varied lengths (geometric, mean ``delim_every``), as real reasoning steps do.
        k = self.delim_every
        return ["\n\n" if k and len(s) == 1 and s[0] % k == 0 else "" for s in seqs]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return ""

    def get_vocab(self) -> dict[str, int]:
        return {}


class AlphaReward(RewardModel):
    """Runs a real PRM forward over each step (so its cost counts), then accepts with probability α,
    decided by the prompt and the step's index (the same decisions on every scheduler)."""

    def __init__(self, prm: Any, alpha: float, seed: int = 0):
        self.prm, self.alpha, self.seed = prm, alpha, seed
        self.name = f"alpha={alpha}"
        self.prompt: dict[int, str] = {}
        self.steps: dict[int, int] = {}

    def start(self, seq: int, conversation: Any) -> None:
        self.prm.new(seq, [1] * PROMPT_LEN)
        self.prompt[seq], self.steps[seq] = str(conversation), 0

    def score(self, seqs: list[int], steps: list[str]) -> list[float]:
        for s in seqs:
            self.prm.append(s, [2] * STEP)
            self.steps[s] += 1
        self.prm.run(seqs, all_positions=False)
        return [1.0 if zlib.crc32(f"{self.seed}|{self.prompt[s]}|{self.steps[s]}".encode()) < self.alpha * 2**32
                else 0.0 for s in seqs]

    def rollback(self, seqs: list[int]) -> None:
        for s in seqs:
            self.prm.truncate(s, STEP)
            self.steps[s] -= 1

    def release(self, seqs: list[int]) -> None:
        for s in seqs:
            self.prm.release(s)

    def usage(self, seq: int) -> ModelUsage:
        return self.prm.states[seq].usage


def build(shape: str, cls: type = Qwen2ForCausalLM, **extra: Any) -> torch.nn.Module:
    cfg = Qwen2Config(**SHAPES[shape], max_position_embeddings=32768, bos_token_id=None, eos_token_id=None,
                      pad_token_id=0, **extra)
    cfg._attn_implementation = "sdpa"
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(DEV):
            model = cls(cfg)
    finally:
        torch.set_default_dtype(torch.float32)
    model.eval()
    if hasattr(model, "generation_config"):
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = 0
    return model


def cuda_time(fn) -> float:
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def copy_bandwidth() -> float:
    x = torch.empty(1 << (30 if DEV == "cuda" else 24), dtype=torch.uint8, device=DEV)
    y = torch.empty_like(x)
    y.copy_(x)
    t = cuda_time(lambda: [y.copy_(x) for _ in range(20)])
    return 2 * x.numel() * 20 / t  # bytes read + written per second


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def hf_ms_per_token(model, static: bool) -> float:
    ids = torch.randint(1, model.config.vocab_size, (1, PROMPT_LEN), device=DEV)
    kw = dict(do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(ids))
    if static:
        kw["cache_implementation"] = "static"
    model.generate(ids, max_new_tokens=8, min_new_tokens=8, **kw)  # warm-up (compiles when static)
    model.generate(ids, max_new_tokens=8, min_new_tokens=8, **kw)
    t1 = cuda_time(lambda: model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw))
    t2 = cuda_time(lambda: model.generate(ids, max_new_tokens=33, min_new_tokens=33, **kw))
    return (t2 - t1) / 32 * 1e3


def generator(model, tok, fast: bool = True) -> HFGenerator:
    return HFGenerator(model, tok, step_delimiters=["\x00\x01\x02"], fast=fast, max_len=2048, sync_every=16)


def ours_ms_per_token(gen: HFGenerator, seq_base: int) -> tuple[float, float]:
    """(ms per decoded token, ms for a 64-token chunk forward) at batch 1."""
    ids = [random.Random(seq_base).randrange(1, 1000) for _ in range(PROMPT_LEN)]
    times = []
    for k in range(2):  # the first pass captures the graphs for these shapes; the second is timed
        s = seq_base + 5 + k
        gen.start(s, ids)
        gen.generate_step([s], [1])
        gen.extend([s], [[3] * STEP])
        t_chunk = cuda_time(lambda: gen.generate_step([s], [1]))
        t = cuda_time(lambda: gen.generate_step([s], [257]))
        gen.release([s])
        times.append(((t - t_chunk) / 256 * 1e3, t_chunk * 1e3))
    return times[-1]


def check_fast_matches_plain(model, tok) -> dict[str, Any]:
    """Greedy tokens of the fast path and of the native engine (host loop; device loop with CUDA graphs)
    against the plain path: how many leading tokens agree (bf16: rounding may flip a near-tie late on)."""
    ids = [random.Random(7).randrange(1, 1000) for _ in range(64)]
    out = {}
    for name, kw in (("plain", dict(fast=False)), ("fast", dict(fast=True)),
                     ("native", dict(engine="native", device_loop=False)),
                     ("native_graph", dict(engine="native", device_loop=True))):
        g = HFGenerator(model, tok, step_delimiters=["\x00\x01\x02"], max_len=2048, sync_every=16, **kw)
        g.start(0, ids)
        out[name] = g.generate_step([0], [48])[0].token_ids
        g.release([0])

    def agree(a: list[int], b: list[int]) -> int:
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    return {"tokens": len(out["fast"]), "identical_prefix": agree(out["plain"], out["fast"]),
            "native_identical_prefix": agree(out["plain"], out["native"]),
            "native_graph_identical_prefix": agree(out["plain"], out["native_graph"]),
            "native_graph_vs_native": agree(out["native"], out["native_graph"])}


def timed_run(dec: RewardGuidedDecoder, prompts: list[str], cfg: RSDConfig, alpha: float | None) -> tuple[list[Any], dict[str, Any]]:
    """One timed ``generate`` (device synced on both sides) and the figures every RSD table reports."""
    sync()
    t = time.perf_counter()
    res = dec.generate(prompts, config=cfg)
    sync()
    wall = time.perf_counter() - t
    judged = sum(r.stats.draft_steps for r in res)
    return res, {"alpha": alpha, "batch": len(prompts), "wall_s": wall, "problems_per_s": len(prompts) / wall,
                 "acceptance": (sum(r.stats.accepted_draft_steps for r in res) / judged) if judged else None,
                 "tokens_out": sum(r.num_output_tokens for r in res)}


def run_rsd(dec: RewardGuidedDecoder, prompts: list[str], alpha: float | None) -> dict[str, Any]:
    cfg = RSDConfig(threshold=1.0 if alpha is None else 0.5, max_step_tokens=STEP, max_steps=STEPS,
                    max_new_tokens=STEP * STEPS, step_delimiters=["\x00\x01\x02"])
    if alpha is not None:
        dec.reward = AlphaReward(dec.reward.prm, alpha, seed=1)
    res, row = timed_run(dec, prompts, cfg, alpha)
    return row | {"target_decode_tokens": sum(r.stats.target.decode_tokens for r in res)}


def run_scheduled(dec: RewardGuidedDecoder, prm: Any, prompts: list[str], alpha: float | None,
                  **update: Any) -> dict[str, Any]:
    """RSD with sampled steps of varied length (``StubTokenizer.delim_every``) on native-engine models:
    the scheduling comparison. Counts forwards and rows per forward of each model."""
    sampled = SamplingConfig(temperature=1.0)
    cfg = RSDConfig(threshold=1.0 if alpha is None else 0.5, max_step_tokens=4 * SCHED_STEP, max_steps=STEPS,
                    max_new_tokens=STEPS * 2 * SCHED_STEP, seed=0, draft_sampling=sampled, target_sampling=sampled,
                    **update)
    dec.reward = AlphaReward(prm, 0.5 if alpha is None else alpha, seed=1)
    models = {"draft": dec.draft.cached, "target": dec.target.cached}
    for m in models.values():
        m.forwards = m.forward_rows = m.rows_computed = 0
    res, row = timed_run(dec, prompts, cfg, alpha)
    return row | {"scheduler": cfg.scheduler, "steps": sum(len(r.accepted_steps) for r in res),
                  **{f"{k}_forwards": m.forwards for k, m in models.items()},
                  **{f"{k}_rows_per_forward": m.forward_rows / max(1, m.forwards) for k, m in models.items()},
                  **{f"{k}_computed_per_forward": m.rows_computed / max(1, m.forwards) for k, m in models.items()}}


def main() -> int:
    global PROMPT_LEN
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=Path("gpu-results.json"))
    ap.add_argument("--quick", action="store_true", help="tiny shapes, to check the script itself")
    ap.add_argument("--prompt-len", type=int, default=PROMPT_LEN)
    ap.add_argument("--batches", default="1,16,128")
    ap.add_argument("--alphas", default="0.5,0.8,0.95")
    ap.add_argument("--skip-hf-static", action="store_true")
    ap.add_argument("--scheduling-batches", default="16",
                    help="batch sizes of the lockstep / no-lockstep comparison (native engine); '' skips it")
    ap.add_argument("--attention", choices=["sdpa", "grouped", "flex"], default=None,
                    help="the native engine's attention in the scheduling table (default: grouped on CUDA)")
    ap.add_argument("--no-overlap", action="store_true",
                    help="in the scheduling table, looks do not launch once more before the host's work")
    ap.add_argument("--budget-s", type=float, default=420, help="skip optional parts past this many seconds")
    ap.add_argument("--no-compile", dest="compile", action="store_false",
                    help="skip the native engine's compiled forward (torch.compile takes a minute or two per model)")
    a = ap.parse_args()
    PROMPT_LEN = a.prompt_len
    t_start = time.perf_counter()
    torch.manual_seed(0)
    R: dict[str, Any] = {"device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu",
                         "torch": torch.__version__, "errors": []}
    import transformers

    R["transformers"] = transformers.__version__

    def save() -> None:
        """The results so far, written at every stage: a killed run still leaves its JSON."""
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(R, indent=2) + "\n")

    def over_budget(what: str) -> bool:
        """Checked before each timed part (the results so far saved)."""
        save()
        if time.perf_counter() - t_start > a.budget_s:
            R["errors"].append(f"skipped {what} and after: time budget ({a.budget_s:g} s) spent")
            return True
        return False

    bw = copy_bandwidth()
    R["copy_bandwidth_GBps"] = bw / 1e9
    small, big = ("tiny", "tiny") if a.quick else ("1.5B", "7B")
    models = {"draft": build(small), "target": build(big), "prm": build(small, Qwen2ForTokenClassification, num_labels=2)}
    tok = StubTokenizer(SHAPES[big]["vocab_size"], PROMPT_LEN)
    tok_small = StubTokenizer(SHAPES[small]["vocab_size"], PROMPT_LEN)
    R["check"] = {}
    for name in ("draft", "target"):
        try:
            R["check"][name] = check_fast_matches_plain(models[name], tok if name == "target" else tok_small)
        except Exception as e:
            R["errors"].append(f"check {name}: {e!r}")
            traceback.print_exc()
    per_token: dict[str, dict[str, float]] = {}
    R["per_token"] = per_token
    gens = {"draft": generator(models["draft"], tok), "target": generator(models["target"], tok)}
    for name in ("draft", "target"):
        row: dict[str, float] = {}
        m = models[name]
        row["limit_ms"] = weight_bytes(m) / bw * 1e3
        try:
            row["ours_ms"], row["chunk64_ms"] = ours_ms_per_token(gens[name], 1000 * (1 + len(per_token)))
            row["fraction_of_limit"] = row["limit_ms"] / row["ours_ms"]
        except Exception as e:
            R["errors"].append(f"ours {name}: {e!r}")
            traceback.print_exc()
        # The native engine (Llama-family forward over KV slots): its host loop (eager, a sync per token),
        # its device loop (each token one CUDA graph, 8 tokens per host check), and that loop's forward
        # compiled (fused kernels inside the graph); greedy, and the device loop at T = 0.7.
        for key, kw, loop_kw in NATIVE_VARIANTS:
            if key == "native_compiled_ms" and not a.compile:
                continue
            if key in ("native_graph_k4_ms", "native_graph_flex_ms", "native_compiled_ms") and \
                    over_budget(f"{key} {name}"):
                continue  # optional rows: the budget keeps time for the RSD and scheduling tables
            try:
                native = HFGenerator(m, tok, step_delimiters=["\x00\x01\x02"], engine="native", max_len=2048, **kw)
                loop_kw = dict(loop_kw)
                attention = loop_kw.pop("attention", None)
                default_attention = native.cached.forward.attention  # the forward is shared by the model's users
                if attention:
                    native.cached.forward.attention = attention
                if loop_kw:
                    native.cached.device_loop = DeviceLoop(native.cached, **loop_kw)
                try:
                    row[key], row[key.replace("_ms", "_chunk64_ms")] = ours_ms_per_token(
                        native, 1000 * (1 + len(per_token)) + 500)
                finally:
                    native.cached.forward.attention = default_attention
                row[key.replace("_ms", "_fraction_of_limit")] = row["limit_ms"] / row[key]
                del native
            except Exception as e:
                R["errors"].append(f"{key} {name}: {e!r}")
                traceback.print_exc()
            save()
        try:
            row["hf_eager_ms"] = hf_ms_per_token(m, static=False)
        except Exception as e:
            R["errors"].append(f"hf eager {name}: {e!r}")
        per_token[name] = row
        print(name, json.dumps(row), flush=True)
    # The PRM scores each 64-token step with one chunk forward over its own cache.
    prm_cache = FastCachedModel(models["prm"], 0, keep_last_logits_only=False, max_len=2048)
    try:
        prm_cache.new(0, [1] * PROMPT_LEN)
        prm_cache.run([0])
        prm_cache.append(0, [2] * STEP)
        prm_cache.run([0])  # capture
        prm_cache.append(0, [2] * STEP)
        R["prm_chunk64_ms"] = cuda_time(lambda: prm_cache.run([0])) * 1e3
        prm_cache.release(0)
    except Exception as e:
        R["errors"].append(f"prm chunk: {e!r}")
    dec = RewardGuidedDecoder(gens["draft"], gens["target"], AlphaReward(prm_cache, 0.8), RSDConfig())
    R["rsd"] = []
    # RSD vs target-only on the CUDA-graph path over transformers' modules ("fast"), at every batch size,
    # and on the native engine's graphed device loop at batch 1; each beside the ideal from its own
    # per-token times (this run).
    engines = [("fast", dec, [int(x) for x in a.batches.split(",")], "ours_ms", "chunk64_ms")]
    if "native_graph_ms" in per_token["target"]:
        native_dec = RewardGuidedDecoder(
            HFGenerator(models["draft"], tok, step_delimiters=["\x00\x01\x02"], engine="native", max_len=2048,
                        device_loop=True),
            HFGenerator(models["target"], tok, step_delimiters=["\x00\x01\x02"], engine="native", max_len=2048,
                        device_loop=True),
            AlphaReward(prm_cache, 0.8), RSDConfig())
        engines.append(("native", native_dec, [1], "native_graph_ms", "native_graph_chunk64_ms"))
    for engine, d, batches, ms_key, chunk_key in engines:
        for b in batches:
            prompts = [f"problem {i}" for i in range(b)]
            if over_budget(f"{engine} batch {b}"):
                break
            try:
                # Warm-up at this batch size: slots grow to it and the graphs for its shapes are captured.
                run_rsd(d, prompts, 0.5)
                run_rsd(d, prompts, None)
                base = run_rsd(d, prompts, None) | {"engine": engine}
                R["rsd"].append(base)
                print(json.dumps(base), flush=True)
                for alpha in [float(x) for x in a.alphas.split(",")]:
                    if over_budget(f"{engine} batch {b} alpha {alpha}"):
                        break
                    r = run_rsd(d, prompts, alpha) | {"engine": engine}
                    r["speedup"] = base["wall_s"] / r["wall_s"]
                    if b == 1 and ms_key in per_token["target"] and ms_key in per_token["draft"]:
                        t_t, t_d = per_token["target"][ms_key], per_token["draft"][ms_key]
                        t_c = per_token["target"].get(chunk_key, t_t)
                        rsd_step = STEP * t_d + R.get("prm_chunk64_ms", 0) + (1 - alpha) * (STEP * t_t + t_c)
                        r["ideal_speedup"] = STEP * t_t / rsd_step
                        r["fraction_of_ideal"] = r["speedup"] / r["ideal_speedup"]
                    R["rsd"].append(r)
                    print(json.dumps(r), flush=True)
            except Exception as e:
                R["errors"].append(f"rsd {engine} batch {b}: {e!r}")
                traceback.print_exc()
            if time.perf_counter() - t_start > a.budget_s:
                break
    # Scheduling: lockstep rounds against none, on the native engine (the fast path above is lockstep
    # only), with sampled steps of varied length. The native engine re-points the models' weights, so
    # this runs after everything that uses the CUDA-graph generators.
    R["scheduling"] = []
    sched_batches = [int(x) for x in a.scheduling_batches.split(",") if x]
    if sched_batches and not over_budget("scheduling"):
        try:
            stub = StubTokenizer(SHAPES[big]["vocab_size"], PROMPT_LEN, delim_every=SCHED_STEP)
            native = RewardGuidedDecoder(
                HFGenerator(models["draft"], stub, engine="native", max_len=PROMPT_LEN + 4 * STEPS * SCHED_STEP),
                HFGenerator(models["target"], stub, engine="native", max_len=PROMPT_LEN + 4 * STEPS * SCHED_STEP),
                AlphaReward(prm_cache, 0.8), RSDConfig())
            if a.attention:
                for g in (native.draft, native.target):
                    g.cached.forward.attention = a.attention
            if a.no_overlap:
                for g in (native.draft, native.target):
                    if g.cached.device_loop is not None:
                        g.cached.device_loop.overlap = False
            R["scheduling_overlap"] = not a.no_overlap
            R["scheduling_attention"] = native.target.cached.forward.attention
            for b in sched_batches:
                prompts = [f"problem {i}" for i in range(b)]
                run_scheduled(native, prm_cache, prompts, 0.8)  # warm-up: slots grow to this batch
                base = run_scheduled(native, prm_cache, prompts, None)
                R["scheduling"].append(base)
                print(json.dumps(base), flush=True)
                for alpha in [float(x) for x in a.alphas.split(",")]:
                    for scheduler in ("lockstep", "auto"):
                        if over_budget(f"scheduling batch {b} alpha {alpha} {scheduler}"):
                            break
                        r = run_scheduled(native, prm_cache, prompts, alpha, scheduler=scheduler)
                        r["speedup"] = base["wall_s"] / r["wall_s"]
                        R["scheduling"].append(r)
                        print(json.dumps(r), flush=True)
        except Exception as e:
            R["errors"].append(f"scheduling: {e!r}")
            traceback.print_exc()
    if not a.skip_hf_static and time.perf_counter() - t_start < a.budget_s - 120:
        for name in ("draft", "target"):
            try:
                per_token[name]["hf_static_ms"] = hf_ms_per_token(models[name], static=True)
            except Exception as e:
                R["errors"].append(f"hf static {name}: {e!r}")
    R["total_s"] = time.perf_counter() - t_start
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(R, indent=2) + "\n")
    print_table(R)
    return 0


def print_table(R: dict[str, Any]) -> None:
    f = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    print(f"\n{R['device']}, torch {R['torch']}, transformers {R['transformers']}, "
          f"copy bandwidth {R['copy_bandwidth_GBps']:.0f} GB/s, {R['total_s']:.0f} s")
    print("ms per token at batch 1 (bandwidth limit: weight bytes / copy bandwidth); native: the engine's host "
          "loop, its device loop (CUDA graphs, one token per replay, and four; FlexAttention), the same at T = 0.7, "
          "and with its forward compiled")
    print("| model | HF eager | HF static | fast (graphs over HF modules) | native host loop | native graphs "
          "| native graphs, 4 tokens/replay | native graphs, flex | native graphs T=0.7 | native compiled | limit "
          "| best / limit | fast==plain | graphs==plain | graphs==host loop |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, row in R["per_token"].items():
        chk = R["check"].get(name, {})
        ours = [row[k] for k in ("ours_ms", "native_graph_ms", "native_graph_k4_ms", "native_graph_flex_ms",
                                 "native_compiled_ms") if k in row]
        best = row["limit_ms"] / min(ours) if ours and "limit_ms" in row else None
        print(f"| {name} | {f(row.get('hf_eager_ms'))} | {f(row.get('hf_static_ms'))} | {f(row.get('ours_ms'))} | "
              f"{f(row.get('native_ms'))} | {f(row.get('native_graph_ms'))} | {f(row.get('native_graph_k4_ms'))} | "
              f"{f(row.get('native_graph_flex_ms'))} | "
              f"{f(row.get('native_graph_t07_ms'))} | "
              f"{f(row.get('native_compiled_ms'))} | {f(row.get('limit_ms'))} | {f(best)} | "
              f"{chk.get('identical_prefix', '-')}/{chk.get('tokens', '-')} | "
              f"{chk.get('native_graph_identical_prefix', '-')}/{chk.get('tokens', '-')} | "
              f"{chk.get('native_graph_vs_native', '-')}/{chk.get('tokens', '-')} |")
    print("\n| engine | batch | α | wall s | problems/s | acceptance | speedup vs target-only | ideal | of ideal |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in R["rsd"]:
        print(f"| {r.get('engine', 'fast')} | {r['batch']} | {'target-only' if r['alpha'] is None else r['alpha']} | "
              f"{r['wall_s']:.2f} | "
              f"{r['problems_per_s']:.2f} | {f(r['acceptance'])} | {f(r.get('speedup'))} | "
              f"{f(r.get('ideal_speedup'))} | {f(r.get('fraction_of_ideal'))} |")
    if R.get("scheduling"):
        print("\nScheduling (native engine, sampled steps of varied length, mean "
              f"{SCHED_STEP} tokens; speedup vs target-only on the same engine; attention: "
              f"{R.get('scheduling_attention')}; looks overlapped: {R.get('scheduling_overlap')})")
        print("(rows / forward: rows writing or reading, and rows computed, idle rows of the device loop included)")
        print("| batch | α | scheduler | wall s | problems/s | speedup | draft rows / forward | "
              "target forwards | target rows / forward |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in R["scheduling"]:
            print(f"| {r['batch']} | {'target-only' if r['alpha'] is None else r['alpha']} | "
                  f"{'-' if r['alpha'] is None else r['scheduler']} | {r['wall_s']:.2f} | {r['problems_per_s']:.2f} | "
                  f"{f(r.get('speedup'))} | {f(r['draft_rows_per_forward'])}, "
                  f"{f(r.get('draft_computed_per_forward'))} | {r['target_forwards']} | "
                  f"{f(r['target_rows_per_forward'])}, {f(r.get('target_computed_per_forward'))} |")
    if R["errors"]:
        print("errors:", *R["errors"], sep="\n  ")


if __name__ == "__main__":
    sys.exit(main())
