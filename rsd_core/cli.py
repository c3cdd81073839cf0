"""The ``rsd`` command.

    rsd demo                                   # the toy trio: a few solved problems and a comparison
    rsd generate "Ann has 3 apples..." --json  # any models by id or path (toy trio by default)
    rsd eval --dataset toy --methods target,draft,sd,rsd --deltas 0.3,0.5,0.7,0.9 --out runs/toy
    rsd plot runs/toy                          # accuracy vs FLOPs and δ-sweep PNGs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rsd_core.config import RSDConfig
from rsd_core.options import OptionError, RSDOptions, flag_spelling

if TYPE_CHECKING:
    from rsd_core.decoder import RewardGuidedDecoder


def _add_model_args(p: argparse.ArgumentParser) -> None:
    RSDOptions.add_arguments(p, max_tokens=1024)  # the models and decoding flags: RSDOptions' fields


def _options(a: argparse.Namespace) -> tuple[RSDOptions, RSDConfig]:
    """The command's options and the decoder config they give; a bad value names its flag."""
    opts = RSDOptions.from_arguments(a)
    try:
        return opts, opts.to_config(RSDConfig())
    except OptionError as e:
        raise e.respelled(flag_spelling) from None


def _decoder(opts: RSDOptions, cfg: RSDConfig) -> RewardGuidedDecoder:
    return opts.model_spec().load(cfg)  # the options checked that the models named go together


def _fmt_flops(x: float) -> str:
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if x >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.0f}"


def _n_params(part: Any) -> int:
    """Parameters a local model uses per token, the output projection included and the input embedding
    not (what its FLOP count multiplies; 0 when it is served or a function)."""
    flops = getattr(getattr(part, "cached", None), "flops", None)
    return int(flops.n_params) if flops is not None else 0


def cmd_demo(a: argparse.Namespace) -> int:
    from rsd_core.decoder import RewardGuidedDecoder
    from rsd_core.eval.datasets import toy_examples
    from rsd_core.eval.runner import evaluate

    t0 = time.perf_counter()
    dec = RewardGuidedDecoder.from_pretrained()
    print("RSD on the embedded toy trio (draft / target / PRM trained on toy arithmetic; CPU, no download)")
    print(f"δ = {dec.config.threshold}: a draft step is kept when the PRM's reward is at least δ.\n")
    examples = toy_examples(a.n)
    for ex in examples[: a.show]:
        print(f"Q: {ex.question}")
        res = dec.generate([[{"role": "user", "content": ex.question}]])[0]
        for s in res.steps:
            verdict = "kept" if s.accepted else "rejected -> target rewrites"
            reward = "    -" if s.reward is None else f"{s.reward:.3f}"
            print(f"  [{s.source:6s} r={reward}] {s.text.strip():32s} {verdict if s.source == 'draft' else ''}")
        print(f"  expected {ex.answer}\n")
    summary = evaluate(dec, examples, ["target", "draft", "rsd"], progress=False)
    print(f"{len(examples)} held-out problems:")
    print(f"{'method':8s} {'accuracy':>8s} {'draft tok':>10s} {'target tok':>10s} {'PRM tok':>8s} {'FLOPs':>8s} {'time s':>7s}")
    for row in summary.values():
        t = row["tokens"]
        print(f"{row['method']:8s} {row['accuracy']:8.3f} {t['draft']['decode']:10d} {t['target']['decode']:10d} "
              f"{t['reward']['prefill']:8d} {_fmt_flops(row['flops']['total']):>8s} {row['wall_s']:7.2f}")
    r, tgt = summary["rsd"], summary["target"]
    share = r["tokens"]["target"]["decode"] / max(1, tgt["tokens"]["target"]["decode"])
    print(f"\nRSD kept {r['acceptance_rate']:.0%} of draft steps; the target wrote {share:.0%} of the tokens it writes "
          f"alone. (decode tokens shown; {time.perf_counter() - t0:.1f}s in all)")
    full = r["flops"]["total"] / max(1.0, tgt["flops"]["total"])
    paper = r["paper_flops"]["total"] / max(1.0, tgt["paper_flops"]["total"])
    print(f"RSD's FLOPs, the draft's and the PRM's included: {full:.2f}x target-only's ({paper:.2f}x by the "
          "paper's count, which leaves out prompts and attention).")
    if _n_params(dec.target):
        d, t_, p = (_n_params(dec.draft), _n_params(dec.target), _n_params(dec.reward))
        sizes = f"the draft uses {d / t_:.0%} of the target's parameters" + (f" and the PRM {p / t_:.0%}" if p else "")
        why = ("which is why RSD saves" if full < 1 else
               "too large a share for a saving: the paper's draft and PRM are 1.5B or 7B next to a 72B target")
        print(f"Per token, {sizes} (the embedding lookup aside), {why}; see docs/evaluation.md.")
    return 0


def cmd_generate(a: argparse.Namespace) -> int:
    prompt = a.prompt if a.prompt is not None else sys.stdin.read()
    if not prompt.strip():
        print("rsd generate: empty prompt (pass it as an argument or on stdin)", file=sys.stderr)
        return 2
    dec = _decoder(*_options(a))
    messages = prompt if a.raw else [{"role": "user", "content": prompt}]
    def on_step(e: Any) -> None:
        if hasattr(e, "accepted") and hasattr(e, "source"):
            r = "-" if e.reward is None else f"{e.reward:.3f}"
            print(f"[{e.source} r={r} {'kept' if e.accepted else 'rejected'}] {e.text.strip()}", file=sys.stderr)

    res = dec.generate([messages], callbacks=[] if a.json else [on_step])[0]
    if a.json:
        print(json.dumps(res.to_dict(), indent=2))
    else:
        print(res.text)
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from rsd_core.eval.datasets import load_examples
    from rsd_core.eval.runner import RecordStore, evaluate, expand_methods, markdown_table, parse_method

    opts, cfg = _options(a)
    deltas = [float(d) for d in a.deltas.split(",") if d.strip()] if a.deltas else []
    methods = expand_methods([m for m in a.methods.split(",") if m.strip()], deltas)
    if not methods:
        raise ValueError("no methods given (--methods target,draft,rsd,...)")
    for m in methods:
        parse_method(m, cfg)  # a typo fails now, not after the models load
    examples = load_examples(a.dataset, a.n, data_file=a.data_file, split=a.split,
                             question_field=a.question_field, answer_field=a.answer_field)
    records = None
    if a.out:
        out = Path(a.out)
        path = out / "records.jsonl"
        meta = {"dataset": a.dataset, "data_file": a.data_file, "split": a.split,
                "fields": [a.question_field, a.answer_field], "prompt_style": a.prompt_style,
                "models": {"draft": opts.draft_model, "target": opts.model, "reward": opts.reward_model,
                           "reward_type": opts.reward_type, "reward_options": opts.reward_options},
                "config": cfg.model_dump(mode="json")}
        records = RecordStore(path, meta, overwrite=a.overwrite)
        if records.records:
            print(f"resuming: {len(records.records)} results already in {path}", file=sys.stderr)
    dec = _decoder(opts, cfg)
    summary = evaluate(dec, examples, methods, config=cfg, batch_size=a.batch_size, progress=not a.no_progress,
                       prompt_style=a.prompt_style, records=records)
    table = markdown_table(summary)
    print(table)
    if not a.out:
        print("rsd eval: nothing saved (pass --out DIR to keep the per-problem records, resume, and plot)",
              file=sys.stderr)
    doc = {"dataset": a.dataset, "n": len(examples), "prompt_style": a.prompt_style,
           "models": {"draft": opts.draft_model, "target": opts.model, "reward": opts.reward_model},
           "config": cfg.model_dump(mode="json"), "methods": list(summary.values())}
    targets = [Path(a.json)] if a.json else []
    if a.out:
        targets.append(Path(a.out) / "summary.json")
        (Path(a.out) / "summary.md").write_text(table + "\n")
    for t in targets:
        t.parent.mkdir(parents=True, exist_ok=True)
        t.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


def cmd_plot(a: argparse.Namespace) -> int:
    from rsd_core.eval.plot import plot_summary

    src = Path(a.summary)
    if src.is_dir():
        src = src / "summary.json"
    for p in plot_summary(src, a.out or src.parent):
        print(p)
    return 0


class _DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default in --help, where it has one (an unset option says nothing, not "None")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Subcommand parsers whose --help shows each option's default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsShown)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rsd", description="Reward-Guided Speculative Decoding")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    d = sub.add_parser("demo", help="RSD on the embedded toy trio (no download, CPU; about 10 s on 2 cores)")
    d.add_argument("--n", type=int, default=60, help="problems in the comparison table")
    d.add_argument("--show", type=int, default=3, help="problems printed step by step")
    d.set_defaults(fn=cmd_demo)
    g = sub.add_parser("generate", help="solve one prompt")
    g.add_argument("prompt", nargs="?", help="the prompt (default: read stdin)")
    g.add_argument("--raw", action="store_true", help="send the prompt as raw text, not as a chat message")
    g.add_argument("--json", action="store_true", help="print the full result as JSON")
    _add_model_args(g)
    g.set_defaults(fn=cmd_generate)
    e = sub.add_parser("eval", help="accuracy vs compute over a dataset (resumable)")
    e.add_argument("--dataset", default="toy", help="toy, toy-reach (1-change problems, numbers in words), gsm8k, math500, a JSONL path or a hub dataset name")
    e.add_argument("--data-file", help="a local JSONL copy of gsm8k / math500 (instead of the hub)")
    e.add_argument("--split", help="hub split (default test)")
    e.add_argument("--methods", default="target,draft,rsd",
                   help="comma list: target,draft,rsd[:δ],sd[:K],bon:N,majority:N")
    e.add_argument("--deltas", help="comma list of δ: 'rsd' in --methods runs once per δ")
    e.add_argument("--prompt-style", default="auto", choices=["auto", "qwen-math", "cot", "plain"],
                   help="how questions are put (auto: by model family)")
    e.add_argument("--n", type=int, default=None, help="number of problems (default all; toy 300)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--out", help="folder for records.jsonl (appended per problem; a rerun resumes), "
                                 "summary.json and summary.md")
    e.add_argument("--overwrite", action="store_true", help="start again instead of resuming --out")
    e.add_argument("--json", help="also write the summary here")
    e.add_argument("--question-field", default=None, help="question field of a JSONL/hub dataset")
    e.add_argument("--answer-field", default=None, help="answer field of a JSONL/hub dataset")
    e.add_argument("--no-progress", action="store_true")
    _add_model_args(e)
    e.set_defaults(fn=cmd_eval)
    pl = sub.add_parser("plot", help="PNG plots of an eval summary (needs matplotlib)")
    pl.add_argument("summary", help="summary.json, or the --out folder of rsd eval")
    pl.add_argument("--out", help="folder for the PNGs (default: next to the summary)")
    pl.set_defaults(fn=cmd_plot)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars would drown the steps we print
    try:
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        resume = " (rerun the same command to resume)" if args.cmd == "eval" and getattr(args, "out", None) else ""
        print(f"rsd {args.cmd}: interrupted{resume}", file=sys.stderr)
        return 130
    except Exception as e:  # a clear one-line message instead of a traceback for expected errors
        from rsd_core.errors import RSDError

        if isinstance(e, (RSDError, FileNotFoundError, KeyError, ValueError, ImportError)):
            print(f"rsd {args.cmd}: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
