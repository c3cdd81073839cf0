"""How well the toy target uses tools: exact-match rates on held-out random tools, by kind of turn.

    python benchmarks/toy_tools.py [--model PATH] [--n 40]

Greedy target-only decoding (plain transformers ``generate``) on lessons drawn from a seed training
never uses. A turn counts only if the whole reply equals the reference: the right tool, every
argument copied exactly, and the closing tag. Arithmetic accuracy on held-out word problems is
printed beside it (tool training must not cost the target its arithmetic).

The call turns are measured three ways: left to the model (as the tools are offered, no grammar); with
the tools offered under their grammar (``tool_choice="auto"``: the model decides, and any call it
starts must name an offered tool and fit its schema); and as a forced call under the grammar
(``tool_choice="any"``, or the tool's name for the schema turn), where the model writes only the
name and the values (``rsd_core.constraints``).
"""

from __future__ import annotations

import argparse
import json
import random

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rsd_core import RewardGuidedDecoder, RSDConfig
from rsd_core.tool_format import HERMES
from rsd_core.toy import toy_model_paths
from rsd_core.toy.task import make_problems
from rsd_core.toy.tool_use import _described_call, _named_call, _schema_fill, _tool_result, make_react_lesson

HELD_OUT_SEED = 424242  # the training streams use TRAIN_SEED + small offsets (rsd_core/toy/train.py)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=toy_model_paths()["target"])
    ap.add_argument("--n", type=int, default=40, help="turns per kind")
    args = ap.parse_args()
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()

    def reply(messages, tools=None, forced="", max_new=100) -> str:
        text = tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True) + forced
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        return forced + tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    dec = RewardGuidedDecoder.from_pretrained(args.model, args.model, None, config=RSDConfig(
        threshold=1.0, max_new_tokens=100))  # target only, greedy: the same model as ``reply``

    def under_grammar(messages, tools, forced: str | None) -> str:
        """``forced=None``: the tools offered (auto); else a forced call starting with ``forced``."""
        if forced is None:
            prefix, grammar = "", HERMES.text_grammar(tools)
        else:
            prefix, grammar = forced or '<tool_call>{"name": "', HERMES.call_grammar(tools)
        return dec.generate([messages], tools=tools, reply_prefix=prefix, grammar=grammar)[0].text

    rng = random.Random(HELD_OUT_SEED)
    rows: dict[str, list[float | None]] = {}
    for name, fn in [("call a tool named in the question", _named_call),
                     ("call a tool described in the question", _described_call),
                     ("fill a schema (forced call)", _schema_fill),
                     ("answer from a tool result", _tool_result)]:
        ok = [0, 0, 0]
        for _ in range(args.n):
            msgs, tools, answer, forced = fn(rng)
            ok[0] += reply(msgs, tools, answer[:forced]).strip() == answer
            if fn is not _tool_result:
                ok[1] += forced == 0 and under_grammar(msgs, tools, None).strip() == answer
                ok[2] += under_grammar(msgs, tools, answer[:forced]).strip() == answer
        free, auto, grammar = (k / args.n for k in ok)
        rows[name] = [free, None if fn in (_tool_result, _schema_fill) else auto,
                      None if fn is _tool_result else grammar]
    ok = 0
    for _ in range(args.n):
        msgs, answer = make_react_lesson(rng)
        ok += reply(msgs, max_new=160).strip() == answer.strip()
    rows["ReAct turn (LlamaIndex ReActAgent)"] = [ok / args.n, None, None]
    problems = make_problems(100, 777)
    rows["arithmetic word problems (100)"] = [sum(
        reply([{"role": "user", "content": p.question}], max_new=120).strip().endswith(f"\\boxed{{{p.answer}}}.")
        for p in problems) / len(problems), None, None]
    print(json.dumps({"model": args.model, "n": args.n, "exact_match": {
        k: dict(zip(["free", "tools_offered_grammar", "forced_call_grammar"], v)) for k, v in rows.items()}}))
    print(f"\n| turn (held-out, n={args.n} each) | left to the model | tools offered, grammar | forced call, grammar |")
    print("|---|---|---|---|")
    for k, v in rows.items():
        print(f"| {k} | " + " | ".join("-" if x is None else f"{x:.2f}" for x in v) + " |")


if __name__ == "__main__":
    main()
