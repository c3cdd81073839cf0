"""How well the toy target uses tools: exact-match rates on held-out random tools, by kind of turn.

    python benchmarks/toy_tools.py [--model PATH] [--n 40]

Greedy target-only decoding (plain transformers ``generate``) on lessons drawn from a seed training
never uses. A turn counts only if the whole reply equals the reference: the right tool, every
argument copied exactly, and the closing tag. Arithmetic accuracy on held-out word problems is
printed beside it (tool training must not cost the target its arithmetic).

The call turns are measured twice: left to the model, and as a forced call (``tool_choice="any"``,
or the tool's name for the schema turn) under the call's grammar (``rsd_core.constraints``), where
the model picks the tool among those offered and writes only the values.
"""

from __future__ import annotations

import argparse
import json
import random

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rsd_core import RewardGuidedDecoder, RSDConfig
from rsd_core.constraints import Grammar
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

    def under_grammar(messages, tools, forced) -> str:
        prefix = forced or '<tool_call>{"name": "'
        return dec.generate([messages], tools=tools, reply_prefix=prefix, grammar=Grammar.tool_calls(tools))[0].text

    rng = random.Random(HELD_OUT_SEED)
    rows = {}
    for name, fn in [("call a tool named in the question", _named_call),
                     ("call a tool described in the question", _described_call),
                     ("fill a schema (forced call)", _schema_fill),
                     ("answer from a tool result", _tool_result)]:
        ok = ok_grammar = 0
        for _ in range(args.n):
            msgs, tools, answer, forced = fn(rng)
            ok += reply(msgs, tools, answer[:forced]).strip() == answer
            if fn is not _tool_result:
                ok_grammar += under_grammar(msgs, tools, answer[:forced]).strip() == answer
        rows[name] = ok / args.n
        if fn is not _tool_result:
            rows[f"{name}, under the call's grammar"] = ok_grammar / args.n
    ok = 0
    for _ in range(args.n):
        msgs, answer = make_react_lesson(rng)
        ok += reply(msgs, max_new=160).strip() == answer.strip()
    rows["ReAct turn (LlamaIndex ReActAgent)"] = ok / args.n
    problems = make_problems(100, 777)
    rows["arithmetic word problems (100)"] = sum(
        reply([{"role": "user", "content": p.question}], max_new=120).strip().endswith(f"\\boxed{{{p.answer}}}.")
        for p in problems) / len(problems)
    print(json.dumps({"model": args.model, "n": args.n, "exact_match": rows}))
    print(f"\n| turn (held-out, n={args.n} each) | exact match |\n|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v:.2f} |")


if __name__ == "__main__":
    main()
