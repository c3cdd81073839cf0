"""The embedded default: the shipped toy trio loads like any checkpoint and shows the paper's effect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from rsd_core.eval.datasets import toy_examples
from rsd_core.eval.runner import evaluate
from rsd_core.rewards import LikelihoodPRM
from rsd_core.toy import toy_model_paths


def test_toy_trio_loads_through_the_plain_transformers_path(toy):
    paths = toy_model_paths()
    assert isinstance(toy.reward, LikelihoodPRM) and toy.same_tokenizer
    tok = AutoTokenizer.from_pretrained(paths["target"])
    text = "Ann has 12 apples.\n\n12 + 5 = 17\n\n"
    assert tok(text).input_ids == toy.target.tokenizer(text).input_ids
    assert len(tok("\n\n", add_special_tokens=False).input_ids) == 1  # the delimiter is one token


@pytest.mark.slow
def test_toy_trio_shows_the_rsd_effect(toy):
    """The documented held-out set (300 problems): draft well below target, RSD at target level for at
    most half the target's FLOPs by both counts, the draft's and the PRM's work included (the paper's
    saving, from a trio in its shape)."""
    s = evaluate(toy, toy_examples(300), ["target", "draft", "rsd"], batch_size=32, progress=False)
    target, draft, rsd = s["target"], s["draft"], s["rsd"]
    assert draft["accuracy"] <= target["accuracy"] - 0.15
    assert rsd["accuracy"] >= target["accuracy"] - 0.01
    assert rsd["tokens"]["target"]["decode"] <= 0.5 * target["tokens"]["target"]["decode"]
    assert rsd["flops"]["target"] < target["flops"]["target"]
    assert rsd["flops"]["total"] <= 0.5 * target["flops"]["total"]
    assert rsd["paper_flops"]["total"] <= 0.5 * target["paper_flops"]["total"]


def test_toy_trio_reaches_one_change_problems_and_numbers_in_words(toy):
    """The reach variant (held out: the eval seed): the target reads one-change problems, numbers in words
    and subtractions from small counts, and RSD keeps its accuracy there (the draft never learned words; the PRM did, so it rejects the
    draft's guesses and the target writes those steps)."""
    s = evaluate(toy, toy_examples(100, reach=True), ["target", "draft", "rsd"], batch_size=32, progress=False)
    assert s["target"]["accuracy"] >= 0.9 and s["draft"]["accuracy"] <= s["target"]["accuracy"] - 0.2
    assert s["rsd"]["accuracy"] >= s["target"]["accuracy"] - 0.02
    for question, answer in [("Ann has 12 apples. She buys 5 more. How many apples does Ann have now?", 17),
                             ("Ann has 12 apples. She buys 5 more. She gives away 3. How many apples does Ann have "
                              "now?", 14),  # README's question: it takes away from a count below 20
                             ("Ben has twelve cards. He wins forty-five more. How many cards does Ben have now?", 57),
                             ("Jon has thirty coins. He loses a dozen. How many coins does Jon have now?", 18)]:
        res = toy.generate([[{"role": "user", "content": question}]])[0]
        assert res.text.endswith(f"The answer is \\boxed{{{answer}}}."), (question, res.text)


def test_toy_trio_has_the_papers_shape(toy):
    """Draft and PRM each at most 1/8 of the target's non-embedding parameters, and the recipe's sizes are
    the shipped ones (so ``python -m rsd_core.toy.train`` remakes these models, not others)."""
    from rsd_core.toy.train import SIZES

    paths = toy_model_paths()

    def non_embedding(name):
        import torch
        from safetensors.torch import load_file

        weights = load_file(str(Path(paths[name]) / "model.safetensors"))
        assert all(t.dtype == torch.float16 for t in weights.values())
        return sum(t.numel() for k, t in weights.items() if "embed_tokens" not in k and "lm_head" not in k)

    target = non_embedding("target")
    assert 8 * non_embedding("draft") <= target and 8 * non_embedding("prm") <= target
    for name in ("draft", "target", "prm"):
        cfg = json.loads((Path(paths[name]) / "config.json").read_text())
        shape = (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
                 cfg["num_key_value_heads"], cfg["intermediate_size"])
        assert shape == SIZES[name], name


def _rsd(*args):
    return subprocess.run([sys.executable, "-m", "rsd_core.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_demo_prints_steps_and_a_table():
    out = _rsd("demo", "--n", "16", "--show", "1")
    assert out.returncode == 0, out.stderr
    assert "[draft" in out.stdout and "accuracy" in out.stdout and "rsd" in out.stdout


@pytest.mark.slow
def test_cli_eval_writes_the_summary_json(tmp_path):
    path = tmp_path / "out.json"
    out = _rsd("eval", "--dataset", "toy", "--methods", "target,draft,rsd,bon:2,majority:2", "--n", "8",
               "--json", str(path), "--no-progress")
    assert out.returncode == 0, out.stderr
    methods = {m["method"]: m for m in json.loads(path.read_text())["methods"]}
    assert set(methods) == {"target", "draft", "rsd", "bon:2", "majority:2"}
    for m in methods.values():
        assert {"method", "n", "accuracy", "acceptance_rate", "target_invocations", "tokens", "flops", "wall_s"} <= set(m)
        assert set(m["tokens"]["draft"]) == {"prefill", "decode"} and "total" in m["flops"]


@pytest.mark.slow
def test_cli_generate_json_and_stdin():
    q = "Max has 94 apples. He uses 70. He buys 28 more. How many apples does Max have now?"
    out = subprocess.run([sys.executable, "-m", "rsd_core.cli", "generate", "--json"], input=q,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["steps"] and "stats" in res
    from rsd_core import RewardGuidedDecoder, RSDConfig

    # The command's answer is the decoder's own, under the flags' defaults.
    dec = RewardGuidedDecoder.from_pretrained(config=RSDConfig(max_new_tokens=1024))
    assert res["text"] == dec.generate([[{"role": "user", "content": q}]])[0].text
    bad = _rsd("generate", "x", "--threshold", "3")
    assert bad.returncode == 2 and "threshold" in bad.stderr


@pytest.mark.slow
def test_training_recipe_runs_every_stage_and_saves_loadable_models(tmp_path):
    """The whole recipe (arithmetic, tool use, ReAct, the reach variant, PRM, draft) at a tiny scale: every stage runs and
    the saved trio loads and decodes through the ordinary path, tools included."""
    from rsd_core import RewardGuidedDecoder, RSDConfig
    from rsd_core.toy.train import train_trio

    logs: list[str] = []
    info = train_trio(tmp_path, scale=0.002, log=logs.append)
    assert set(info["trained"]) == {"target", "draft", "prm"}
    assert any("tool use with ReAct" in line for line in logs) and any("tool use" in line for line in logs)
    assert any("with the reach variant" in line for line in logs) and any("reach variant among" in line for line in logs)
    dec = RewardGuidedDecoder.from_pretrained(str(tmp_path / "draft"), str(tmp_path / "target"),
                                              str(tmp_path / "prm"), config=RSDConfig(max_new_tokens=8))
    tools = [{"type": "function", "function": {"name": "square", "parameters": {"type": "object", "properties": {}}}}]
    res = dec.generate([[{"role": "user", "content": "What is the value of square(3)?"}]], tools=tools,
                       reply_prefix='<tool_call>{"name": "square", "arguments": ')[0]
    assert res.text.startswith('<tool_call>{"name": "square"') and res.num_output_tokens <= 8


def test_recipe_continues_the_target_with_the_reach_stage(tmp_path, capsys, monkeypatch):
    """``--only target-reach``: the target's last stage alone, from a saved target, and a plain error for
    the flags it does not go with (named as flags)."""
    from rsd_core.toy import train

    def run(*argv):
        monkeypatch.setattr(sys, "argv", ["train", *argv])
        with pytest.raises(SystemExit) as e:
            train.main()
        return e.value.code, capsys.readouterr().err

    assert run("--out", str(tmp_path), "--from", str(tmp_path), "--only", "draft")[1].endswith(
        "--from goes with --only target-reach\n")
    assert "runs alone" in run("--only", "target-reach,draft")[1]
    code, err = run("--only", "target-reach", "--from", str(tmp_path / "nowhere"), "--out", str(tmp_path))
    assert code == 2 and "--from" in err and "no target/config.json" in err
    logs: list[str] = []
    info = train.continue_target_reach(Path(toy_model_paths()["target"]).parent, tmp_path, scale=0.002,
                                       log=logs.append)
    assert info["trained"] == ["target-reach"] and any("reach variant" in line for line in logs)
    assert (tmp_path / "target" / "model.safetensors").is_file()
    assert AutoTokenizer.from_pretrained(tmp_path / "target")("12 + 5").input_ids == AutoTokenizer.from_pretrained(
        toy_model_paths()["target"])("12 + 5").input_ids
