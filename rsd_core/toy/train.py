"""Train the toy trio (draft, target, PRM) from scratch on the toy task, deterministically on a CPU.

    python -m rsd_core.toy.train --out rsd_core/toy/weights

Writes ``tokenizer/``-complete ``draft/``, ``target/`` and ``prm/`` folders with ``save_pretrained``
(safetensors, Qwen2 architectures), so they load with plain ``from_pretrained`` like any checkpoint.

The trio has the paper's shape: the draft and the PRM each have at most 1/8 of the target's
non-embedding parameters (the paper: 1.5B or 7B draft and PRM, 72B target), so RSD saves FLOPs.

The PRM is a likelihood PRM (``rsd_core/rewards/likelihood.py``): a small LM (the draft's shape) that
learns the task as the draft does, then settles at a low learning rate on its own stream of solutions;
a step's reward is the smallest probability it gives any of the step's tokens. A step it would not
have written itself scores low. (A two-class step-tag classifier trained on good and corrupted steps
learned too slowly on 2 CPU cores to separate them: see docs/reward-models.md.)

The target is trained in four stages: arithmetic; then tool use (``tool_use.py``: calling listed
tools in the ``<tool_call>`` format of its chat template, answering from a tool's result, filling a
schema, half of every batch still arithmetic); then the same with LlamaIndex ReActAgent turns mixed in;
then the same with the task's reach variant among the problems (one change, numbers stated in words).
The draft and the PRM learn the held-out task's arithmetic only: a draft's fumbled tool call is a step the PRM finds
unlikely, so it rejects it and the target writes it, which is RSD doing its job.

Each model draws its training problems from its own seeded stream, so changing one model's recipe
leaves the others' weights unchanged.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from rsd_core.toy.task import REACH, make_problem
from rsd_core.toy.tokenizer import train_tokenizer
from rsd_core.toy.tool_use import make_lesson, make_react_lesson

TRAIN_SEED = 1234
DRAFT_STEPS = 5000  # the draft's cosine schedule is laid out for this many steps...
DRAFT_STOP = 2800  # ...and stopped here: 0.82 on held-out problems, 17 points below the target (training.json)
PRM_STEPS = 4200  # the PRM's first stage: the task, at the draft's learning rate, from the draft's start
PRM_SETTLE_STEPS = 12000  # its second: its own stream at a low learning rate (fewer false rejections)...
PRM_REACH_ROWS = 8  # ...8 of its 32 problems a step in the reach variant, so it judges those steps too
TOOL_STEPS = 3000  # the target's second stage: tool use (rsd_core/toy/tool_use.py)
REACT_STEPS = 2000  # its third: more of the same, one LlamaIndex ReActAgent turn in every batch
REACH_STEPS = 1200  # its fourth: the reach variant too (one-change problems, numbers in words; issue 19)

SIZES = {
    # name: (hidden, layers, heads, kv_heads, mlp)
    # head_dim 32 throughout: vLLM's CPU attention takes 32, not 24
    "draft": (64, 2, 2, 2, 160),
    "prm": (64, 2, 2, 2, 160),
    "target": (128, 4, 4, 2, 384),
}


def _config(tok: PreTrainedTokenizerFast, name: str, **extra) -> Qwen2Config:
    hidden, layers, heads, kv, mlp = SIZES[name]
    return Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=mlp,
        max_position_embeddings=4096,  # RoPE: longer prompts than training's still run (e.g. RAG templates)
        tie_word_embeddings=True,
        rope_theta=10000.0,  # type: ignore[call-arg]  # still taken as a keyword; typed as rope_parameters
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **extra,
    )


def _reloaded(tok: PreTrainedTokenizerFast, tmp: Path, sample: list[str]) -> PreTrainedTokenizerFast:
    """Train with the tokenizer exactly as ``AutoTokenizer`` will load it next to a Qwen2 config."""
    import shutil

    from transformers import AutoTokenizer

    tmp.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(tmp)
    Qwen2Config(vocab_size=len(tok)).save_pretrained(tmp)
    loaded: Any = AutoTokenizer.from_pretrained(tmp)
    shutil.rmtree(tmp)
    for text in sample:
        if loaded(text).input_ids != tok(text).input_ids:
            raise RuntimeError(f"the saved toy tokenizer does not load back the same: {text[:80]!r}")
    return loaded


def chat_prompt(tok: PreTrainedTokenizerFast, question: str) -> str:
    return str(tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                       add_generation_prompt=True))


def _lr(step: int, total: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def _problem_ids(tok, rng: random.Random, reach: bool = False) -> tuple[list[int], list[int]]:
    """One chat-formatted word problem as (input ids, labels): loss on the solution only."""
    p = make_problem(rng, **REACH) if reach else make_problem(rng)
    prompt = tok(chat_prompt(tok, p.question), add_special_tokens=False).input_ids
    answer = tok(p.solution + tok.eos_token, add_special_tokens=False).input_ids
    return prompt + answer, [-100] * len(prompt) + answer


def train_lm(model, tok, rng: random.Random, steps: int, batch: int, lr: float, log, stop_at: int | None = None,
             reach_rng: random.Random | None = None, reach_rows: int = 0) -> None:
    """Next-token training on the solution part of chat-formatted problems (fresh problems each step);
    ``reach_rows`` of each batch from ``reach_rng`` in the task's reach variant."""
    train_tools(model, tok, rng, None, steps, batch, lr, log, tool_share=0.0, stop_at=stop_at,
                reach_rng=reach_rng, reach_rows=reach_rows)


def _tool_lesson_ids(tok, rng: random.Random) -> tuple[list[int], list[int]]:
    """One tool-use chat as (input ids, labels): the prompt through the chat template with its tools,
    and the reply, less what ``tool_choice`` would have forced."""
    messages, tools, answer, forced = make_lesson(rng)
    text = tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    prompt = tok(text + answer[:forced], add_special_tokens=False).input_ids
    reply = tok(answer[forced:] + tok.eos_token, add_special_tokens=False).input_ids
    return prompt + reply, [-100] * len(prompt) + reply


def _react_lesson_ids(tok, rng: random.Random) -> tuple[list[int], list[int]]:
    messages, answer = make_react_lesson(rng)
    prompt = tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                 add_special_tokens=False).input_ids
    reply = tok(answer + tok.eos_token, add_special_tokens=False).input_ids
    return prompt + reply, [-100] * len(prompt) + reply


def train_tools(model, tok, arith_rng: random.Random, tool_rng: random.Random | None, steps: int, batch: int, lr: float,
                log, tool_share: float = 0.5, react_rows: int = 0, checkpoint=None,
                stop_at: int | None = None, reach_rng: random.Random | None = None, reach_rows: int = 0) -> None:
    """Teach a trained model tool use, on a mix of tool chats and arithmetic (which it keeps).

    ``react_rows``: ReActAgent turns per step (from the same tool stream), in place of tool chats.
    ``tool_share=0`` (no tool stream needed) is plain next-token training on word problems.
    ``checkpoint(step)``, if given, is called every 500 steps (to look at a long run before it ends).
    ``stop_at``: end after that many steps of a schedule laid out for ``steps``.
    ``reach_rows``: word problems per step from ``reach_rng`` in the reach variant, in place of plain ones."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    model.train()
    n_tools = round(batch * tool_share) - react_rows
    tool_rng = tool_rng if tool_rng is not None else random.Random(0)  # drawn from only when tool_share > 0
    for step in range(steps if stop_at is None else min(stop_at, steps)):
        tool_rows = [_tool_lesson_ids(tok, tool_rng) for _ in range(n_tools)]
        react = [_react_lesson_ids(tok, tool_rng) for _ in range(react_rows)]
        arith_rows = [_problem_ids(tok, arith_rng) for _ in range(batch - n_tools - react_rows - reach_rows)]
        arith_rows += [_problem_ids(tok, reach_rng, reach=True) for _ in range(reach_rows)]  # type: ignore[arg-type]
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, lr)
        loss = torch.zeros(())
        for rows in (tool_rows, react, arith_rows):  # one forward each: short rows are not padded to long ones
            if rows:
                x, y = _pad([r[0] for r in rows], tok.pad_token_id), _pad([r[1] for r in rows], -100)
                mask = (y != -100) | (x != tok.pad_token_id)
                loss = loss + model(input_ids=x, attention_mask=mask, labels=y).loss * len(rows) / batch
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"  step {step:5d} loss {loss.item():.4f}")
        if checkpoint is not None and step % 500 == 499:
            model.eval()
            checkpoint(step + 1)
            model.train()
    model.eval()


def _problem_stream(name: str, seed: int) -> random.Random:
    """Each model's own seeded stream of training problems."""
    if name == "target":
        # The recipe that first produced the shipped target drew its problems from the main stream after
        # a draft had used the first 1200 x 64; keeping that offset keeps the target reproducible.
        rng = random.Random(TRAIN_SEED + seed)
        for _ in range(1200 * 64):
            make_problem(rng)
        return rng
    return random.Random(TRAIN_SEED + 100 * seed + {"draft": 1, "prm": 7, "target-tools": 13,
                                                    "target-react": 19, "target-reach": 23,
                                                    "target-reach-problems": 29, "prm-reach": 31}[name])


def train_target_reach(model, tok, seed: int, steps: int, lr: float, log, checkpoint=None) -> None:
    """The target's fourth stage: per batch of 16, 6 tool chats, 1 ReAct turn, 5 reach-variant problems
    (one change, numbers in words) and 4 plain ones, so it keeps what the earlier stages taught."""
    torch.manual_seed(seed + 8)
    train_tools(model, tok, _problem_stream("target", seed), _problem_stream("target-reach", seed), max(steps, 1),
                16, lr, log, tool_share=7 / 16, react_rows=1, checkpoint=checkpoint,
                reach_rng=_problem_stream("target-reach-problems", seed), reach_rows=5)


def train_trio(out: Path, seed: int = 0, scale: float = 1.0, log=functools.partial(print, flush=True),
               only: tuple[str, ...] = ("target", "draft", "prm")) -> dict:
    """Train and save the three models; ``scale`` shortens training (tests use a tiny one).

    ``only``: the models to train and save (each trains on its own; none needs another's weights)."""
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    corpus_rng = random.Random(TRAIN_SEED - 1)
    corpus = []
    for _ in range(4000):
        p = make_problem(corpus_rng)
        corpus.append(f"<|im_start|>user\n{p.question}<|im_end|>\n<|im_start|>assistant\n{p.solution}")
    tok = _reloaded(train_tokenizer(corpus), out / "_tokenizer_check", corpus[:300])
    log(f"tokenizer: {len(tok)} tokens")
    plan = {"draft": (int(DRAFT_STEPS * scale), 3e-3), "target": (int(2000 * scale), 2e-3),
            "target-tools": (int(TOOL_STEPS * scale), 1.2e-3), "target-react": (int(REACT_STEPS * scale), 1e-3),
            "target-reach": (int(REACH_STEPS * scale), 1e-3),
            "prm": (int(PRM_STEPS * scale), 3e-3), "prm-settle": (int(PRM_SETTLE_STEPS * scale), 5e-4)}
    out.mkdir(parents=True, exist_ok=True)
    models: dict[str, Qwen2ForCausalLM] = {}
    for name in ("target", "draft"):
        if name not in only:
            continue
        steps, lr = plan[name]
        log(f"{name}: {steps} steps")
        torch.manual_seed(seed + {"draft": 1, "target": 2}[name])
        model = Qwen2ForCausalLM(_config(tok, name))
        train_lm(model, tok, _problem_stream(name, seed), max(steps, 1), 64, lr, log,
                 stop_at=max(int(DRAFT_STOP * scale), 1) if name == "draft" else None)
        if name == "target":  # then tool use: calls in the chat template's format, then LlamaIndex's ReAct
            steps, lr = plan["target-tools"]
            log(f"target: {steps} steps of tool use")
            torch.manual_seed(seed + 4)
            train_tools(model, tok, _problem_stream("target", seed), _problem_stream("target-tools", seed),
                        max(steps, 1), 16, lr, log)
            steps, lr = plan["target-react"]
            log(f"target: {steps} steps of tool use with ReAct")
            torch.manual_seed(seed + 5)
            train_tools(model, tok, _problem_stream("target", seed), _problem_stream("target-react", seed),
                        max(steps, 1), 16, lr, log, tool_share=0.5, react_rows=1)
            steps, lr = plan["target-reach"]
            log(f"target: {steps} steps with the reach variant (one change, numbers in words)")
            train_target_reach(model, tok, seed, steps, lr, log)
        models[name] = model
    if "prm" in only:
        steps, lr = plan["prm"]
        log(f"prm: {steps} steps of the task, then {plan['prm-settle'][0]} at a low learning rate, the reach "
            "variant among them")
        torch.manual_seed(seed + 1)  # the draft's start: the same initial weights and problems
        prm = Qwen2ForCausalLM(_config(tok, "prm"))
        train_lm(prm, tok, _problem_stream("draft", seed), max(steps, 1), 64, lr, log)
        steps, lr = plan["prm-settle"]
        torch.manual_seed(seed + 6)
        train_lm(prm, tok, _problem_stream("prm", seed), max(steps, 1), 32, lr, log,
                 reach_rng=_problem_stream("prm-reach", seed), reach_rows=PRM_REACH_ROWS)
        models["prm"] = prm
        prm.config.rsd_reward = {"type": "likelihood", "aggregate": "min"}
    for name, model in models.items():
        if hasattr(model, "generation_config"):
            model.generation_config.pad_token_id = tok.pad_token_id
        # fp16 on disk keeps the package small; loaders upcast to fp32 on CPU.
        model.half().save_pretrained(out / name)
        tok.save_pretrained(out / name)
    info = {"seed": seed, "scale": scale, "trained": list(models), "train_seconds": round(time.perf_counter() - t0, 1),
            "params": {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}}
    name = "training.json" if len(models) == 3 else f"training-{'-'.join(models)}.json"
    (out / name).write_text(json.dumps(info, indent=2) + "\n")
    log(json.dumps(info))
    return info


def continue_target_reach(src: Path, out: Path, seed: int = 0, scale: float = 1.0,
                          log=functools.partial(print, flush=True), checkpoint=None) -> dict:
    """Run only the target's fourth stage, from the target saved in ``src`` (``--only target-reach``).

    The shipped target was made this way: its first three stages ran before the reach variant existed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    if not (src / "target" / "config.json").is_file():
        raise FileNotFoundError(f"--from {src}: no target/config.json there (a folder the recipe wrote)")
    tok: Any = AutoTokenizer.from_pretrained(src / "target")
    model = AutoModelForCausalLM.from_pretrained(src / "target", dtype=torch.float32)
    steps = max(int(REACH_STEPS * scale), 1)
    log(f"target: {steps} steps with the reach variant, from {src / 'target'}")
    train_target_reach(model, tok, seed, steps, 1e-3, log, checkpoint=checkpoint)
    model.half().save_pretrained(out / "target")
    tok.save_pretrained(out / "target")
    info = {"seed": seed, "scale": scale, "trained": ["target-reach"], "from": str(src),
            "train_seconds": round(time.perf_counter() - t0, 1)}
    (out / "training-target-reach.json").write_text(json.dumps(info, indent=2) + "\n")
    log(json.dumps(info))
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the full training steps")
    ap.add_argument("--only", default="target,draft,prm",
                    help="comma list of the models to train; target-reach: only the target's last stage, from --from")
    ap.add_argument("--from", dest="src", type=Path, default=None,
                    help="with --only target-reach: the recipe's folder holding the target to continue (default --out)")
    ap.add_argument("--threads", type=int, default=2,
                    help="CPU threads (the shipped weights name theirs: float sums differ in the last bits)")
    args = ap.parse_args()
    if args.threads < 1:
        ap.error("--threads must be at least 1")
    torch.set_num_threads(args.threads)
    only = tuple(x.strip() for x in args.only.split(",") if x.strip())
    unknown = set(only) - {"target", "draft", "prm", "target-reach"}
    if unknown:
        ap.error(f"unknown model(s) {sorted(unknown)}: use target, draft, prm (or target-reach alone)")
    if "target-reach" in only:
        if len(only) > 1:
            ap.error("--only target-reach runs alone (the target's other stages come before it)")
        try:
            continue_target_reach(args.src or args.out, args.out, args.seed, args.scale)
        except FileNotFoundError as e:
            ap.error(str(e))
        return
    if args.src is not None:
        ap.error("--from goes with --only target-reach")
    train_trio(args.out, args.seed, args.scale, only=only)


if __name__ == "__main__":
    main()
