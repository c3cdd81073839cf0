"""Train the toy trio (draft, target, PRM) from scratch on the toy task, deterministically on a CPU.

    python -m rsd_core.toy.train --out rsd_core/toy/weights

Writes ``tokenizer/``-complete ``draft/``, ``target/`` and ``prm/`` folders with ``save_pretrained``
(safetensors, Qwen2 architectures), so they load with plain ``from_pretrained`` like any checkpoint.

How the PRM learns what a bad step looks like: half of its training steps are the reference step,
the other half are wrong steps, both synthetic corruptions (an off-by-one result, a dropped carry, a
wrong operand) and real mistakes sampled from the trained draft. Labels are exact: a step is good iff
it equals the reference continuation.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import time
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, Qwen2ForTokenClassification

from rsd_core.toy.task import STEP_DELIMITER, ToyProblem, make_problem
from rsd_core.toy.tokenizer import STEP_TAG, train_tokenizer

TRAIN_SEED = 1234
_CLASS_WEIGHT = torch.tensor([2.0, 1.0])  # training problems come from this stream; evaluation uses other seeds

SIZES = {
    # name: (hidden, layers, heads, kv_heads, mlp)
    "draft": (96, 3, 4, 2, 256),
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
        max_position_embeddings=512,
        tie_word_embeddings=True,
        rope_theta=10000.0,
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
    loaded = AutoTokenizer.from_pretrained(tmp)
    shutil.rmtree(tmp)
    for text in sample:
        if loaded(text).input_ids != tok(text).input_ids:
            raise RuntimeError(f"the saved toy tokenizer does not load back the same: {text[:80]!r}")
    return loaded


def chat_prompt(tok: PreTrainedTokenizerFast, question: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)


def _lr(step: int, total: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def train_lm(model, tok, rng: random.Random, steps: int, batch: int, lr: float, log) -> None:
    """Next-token training on the solution part of chat-formatted problems (fresh problems each step)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    model.train()
    for step in range(steps):
        ids, labels = [], []
        for _ in range(batch):
            p = make_problem(rng)
            prompt = tok(chat_prompt(tok, p.question), add_special_tokens=False).input_ids
            answer = tok(p.solution + tok.eos_token, add_special_tokens=False).input_ids
            ids.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)
        x, y = _pad(ids, tok.pad_token_id), _pad(labels, -100)
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, lr)
        loss = model(input_ids=x, attention_mask=(y != -100) | (x != tok.pad_token_id), labels=y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"  step {step:5d} loss {loss.item():.4f}")
    model.eval()


def corrupt_step(rng: random.Random, p: ToyProblem, k: int) -> str:
    """A plausible but wrong version of reference step ``k`` (the kinds of slip a small model makes)."""
    ref = p.solution_steps[k]
    vals = p.values
    if k == len(p.changes):  # the final answer line
        wrong = vals[-1] + rng.choice([-10, -2, -1, 1, 2, 10, 100])
        return f"The answer is \\boxed{{{max(0, wrong)}}}."
    x, (op, b), y = vals[k], p.changes[k], vals[k + 1]
    kind = rng.randrange(5)
    if kind == 0:  # result off by a little
        y = y + rng.choice([-11, -10, -9, -2, -1, 1, 2, 9, 10, 11])
    elif kind == 1:  # one digit of the result changed
        s = list(str(y))
        i = rng.randrange(len(s))
        s[i] = str((int(s[i]) + rng.choice([1, 9])) % 10)
        y = int("".join(s))
    elif kind == 2:  # wrong left operand (a stale or misread value), arithmetic done right
        x = rng.choice([v for v in vals if v != x] or [x + 1])
        y = x + b if op == "+" else x - b
    elif kind == 3:  # wrong right operand
        b = rng.choice([c for _, c in p.changes if c != b] or [b + 1])
        y = x + b if op == "+" else x - b
    else:  # wrong operation
        op = "-" if op == "+" else "+"
        y = x + b if op == "+" else x - b
    step = f"{x} {op} {b} = {y}"
    return step if step != ref else f"{x} {op} {b} = {y + 1}"


@torch.no_grad()
def sample_draft_steps(draft, tok, rng: random.Random, n: int, log) -> list[tuple[ToyProblem, int, str]]:
    """Let the trained draft write step k after k reference steps; keep (problem, k, step text)."""
    (delim_id,) = tok(STEP_DELIMITER, add_special_tokens=False).input_ids
    out: list[tuple[ToyProblem, int, str]] = []
    tok.padding_side = "left"
    for start in range(0, n, 256):
        items = []
        for _ in range(min(256, n - start)):
            p = make_problem(rng)
            k = rng.randrange(len(p.solution_steps))
            prefix = "".join(s + STEP_DELIMITER for s in p.solution_steps[:k])
            items.append((p, k, chat_prompt(tok, p.question) + prefix))
        enc = tok([t for _, _, t in items], return_tensors="pt", padding=True, add_special_tokens=False)
        temp = 1.0 if start % 512 == 0 else 0.7
        gen = draft.generate(
            **enc, max_new_tokens=20, do_sample=True, temperature=temp, top_k=0,
            eos_token_id=[delim_id, tok.eos_token_id], pad_token_id=tok.pad_token_id,
        )
        texts = tok.batch_decode(gen[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
        out += [(p, k, t.split(STEP_DELIMITER)[0].strip()) for (p, k, _), t in zip(items, texts)]
    tok.padding_side = "right"
    wrong = sum(t != p.solution_steps[k] for p, k, t in out)
    log(f"  draft samples: {len(out)}, wrong {wrong} ({wrong / len(out):.1%})")
    return out


def prm_example(tok, rng: random.Random, pool) -> tuple[list[int], list[int]]:
    """One PRM sequence: question, k good steps and one last step that is good or bad.

    Every token of a step is labelled "is the step right so far" (its tokens are a prefix of the
    reference step's), and the tag "is the whole step right". The dense labels teach the classifier
    where a step goes wrong, which it learns far faster than from the tag alone; at inference only the
    tag is read.
    """
    if rng.random() < 0.5:
        p, k, last = pool[rng.randrange(len(pool))]
    else:
        p = make_problem(rng)
        k = rng.randrange(len(p.solution_steps))
        last = p.solution_steps[k] if rng.random() < 0.4 else corrupt_step(rng, p, k)
    steps = p.solution_steps[:k] + [last]
    ids = tok(chat_prompt(tok, p.question), add_special_tokens=False).input_ids
    labels = [-100] * len(ids)
    tag = tok.convert_tokens_to_ids(STEP_TAG)
    for i, s in enumerate(steps):
        s_ids = tok(s, add_special_tokens=False).input_ids
        ref = tok(p.solution_steps[i], add_special_tokens=False).input_ids
        ids += s_ids + [tag]
        prefix_ok = [int(s_ids[: j + 1] == ref[: j + 1]) for j in range(len(s_ids))]
        labels += prefix_ok + [int(s == p.solution_steps[i])]
    return ids, labels


def train_prm(model, tok, rng: random.Random, pool, steps: int, batch: int, lr: float, log) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    model.train()
    for step in range(steps):
        ex = [prm_example(tok, rng, pool) for _ in range(batch)]
        x, y = _pad([e[0] for e in ex], tok.pad_token_id), _pad([e[1] for e in ex], -100)
        mask = torch.zeros_like(x, dtype=torch.bool)
        for i, (ids, _) in enumerate(ex):
            mask[i, : len(ids)] = True
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, lr)
        logits = model(input_ids=x, attention_mask=mask).logits
        # A wrong step let through costs accuracy; a good step sent to the target costs only compute.
        loss = torch.nn.functional.cross_entropy(
            logits.view(-1, 2), y.view(-1), weight=_CLASS_WEIGHT, ignore_index=-100
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"  step {step:5d} loss {loss.item():.4f}")
    model.eval()


def train_trio(out: Path, seed: int = 0, scale: float = 1.0, log=functools.partial(print, flush=True)) -> dict:
    """Train and save the three models; ``scale`` shortens training (tests use a tiny one)."""
    torch.manual_seed(seed)
    rng = random.Random(TRAIN_SEED + seed)
    t0 = time.perf_counter()
    corpus_rng = random.Random(TRAIN_SEED - 1)
    corpus = []
    for _ in range(4000):
        p = make_problem(corpus_rng)
        corpus.append(f"<|im_start|>user\n{p.question}<|im_end|>\n<|im_start|>assistant\n{p.solution}")
    tok = _reloaded(train_tokenizer(corpus), out / "_tokenizer_check", corpus[:300])
    log(f"tokenizer: {len(tok)} tokens")
    plan = {"draft": (int(1200 * scale), 3e-3), "target": (int(2000 * scale), 2e-3), "prm": (int(1000 * scale), 2e-3)}
    out.mkdir(parents=True, exist_ok=True)
    models = {}
    for name in ("draft", "target"):
        steps, lr = plan[name]
        log(f"{name}: {steps} steps")
        torch.manual_seed(seed + {"draft": 1, "target": 2}[name])
        model = Qwen2ForCausalLM(_config(tok, name))
        train_lm(model, tok, rng, max(steps, 1), 64, lr, log)
        models[name] = model
    pool = sample_draft_steps(models["draft"], tok, rng, max(256, int(4096 * scale)), log)
    steps, lr = plan["prm"]
    log(f"prm: {steps} steps")
    torch.manual_seed(seed + 3)
    # Like Qwen2.5-Math-PRM (fine-tuned from Qwen2.5-Math-Instruct), the PRM starts from the target's
    # weights: it already knows the arithmetic, and only has to learn to judge a step.
    prm = Qwen2ForTokenClassification(_config(tok, "target", num_labels=2))
    prm.model.load_state_dict(models["target"].model.state_dict())
    train_prm(prm, tok, rng, pool, max(steps, 1), 64, lr, log)
    models["prm"] = prm
    prm.config.rsd_reward = {"type": "step_tag", "step_tag": STEP_TAG, "system_prompt": None}
    for name, model in models.items():
        if hasattr(model, "generation_config"):
            model.generation_config.pad_token_id = tok.pad_token_id
        # fp16 on disk keeps the package small; loaders upcast to fp32 on CPU.
        model.half().save_pretrained(out / name)
        tok.save_pretrained(out / name)
    info = {"seed": seed, "scale": scale, "train_seconds": round(time.perf_counter() - t0, 1),
            "params": {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}}
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    log(json.dumps(info))
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the full training steps")
    args = ap.parse_args()
    torch.set_num_threads(2)
    train_trio(args.out, args.seed, args.scale)


if __name__ == "__main__":
    main()
