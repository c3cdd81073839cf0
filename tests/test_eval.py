"""Answer extraction, grading, datasets and the evaluation summary."""

from __future__ import annotations

import json
import sys
import types

import pytest

from rsd_core.baselines import speculative_decoding, target_only
from rsd_core.cli import main as cli_main
from rsd_core.eval.answers import extract_answer, extract_boxed, extract_gsm8k, grade, grade_numeric
from rsd_core.eval.datasets import Example, jsonl_examples, load_examples, toy_examples
from rsd_core.eval.prompts import COT_INSTRUCTION, build_messages, resolve_style
from rsd_core.eval.runner import MODELS, RecordStore, evaluate, expand_methods, markdown_table
from rsd_core.toy.task import make_problems


@pytest.mark.parametrize("text, expected", [
    (r"The answer is \boxed{17}.", "17"),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"first \boxed{3} then \boxed{ {a}+{b} }", "{a}+{b}"),
    (r"\boxed {5}", "5"),
    (r"no box here", None),
    (r"broken \boxed{12", None),
])
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_answer_falls_back_to_gsm8k_marker_then_last_number():
    assert extract_answer("so 3 + 4 = 7\n#### 1,234") == "1234"
    assert extract_answer("we get 12 and then 1,500 apples") == "1500"
    assert extract_answer("nothing") is None


def test_grade_numeric():
    assert grade_numeric("17", "17") and grade_numeric("17.0", "17") and grade_numeric("1,000", "1000")
    assert not grade_numeric("18", "17") and not grade_numeric(None, "17")
    assert grade_numeric("x+1", "x+1") and not grade_numeric("x+1", "x+2")


def test_toy_problems_are_consistent_and_seeded():
    for p in make_problems(200, seed=5):
        assert p.solution_steps[-1] == f"The answer is \\boxed{{{p.answer}}}."
        assert all(0 <= v <= 999 for v in p.values)
        assert extract_answer(p.solution) == str(p.answer)
    assert toy_examples(5) == toy_examples(5) and toy_examples(5, seed=1) != toy_examples(5)


def test_jsonl_loader_reads_named_fields_and_reports_missing_ones(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"problem": f"q{i}", "solution": str(i)}) for i in range(5)) + "\n")
    ex = jsonl_examples(path, "problem", "solution", n=3)
    assert [e.question for e in ex] == ["q0", "q1", "q2"] and ex[2].answer == "2"
    with pytest.raises(KeyError, match="question"):
        jsonl_examples(path)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_examples("no-such-dataset")


# ------------------------------------------------------------------ extraction and grading (issue 6)


@pytest.mark.parametrize("text, expected", [
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
    (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces are not nesting
    (r"\fbox{7}", "7"),
    (r"\boxed{1} and later \fbox{2}", "2"),
    (r"\boxed{x^{2^{3}}}", "x^{2^{3}}"),
])
def test_extract_boxed_nesting(text, expected):
    assert extract_boxed(text) == expected


def test_extract_gsm8k_takes_the_line_after_the_last_marker():
    assert extract_gsm8k("a\n#### 5\n") == "5"
    assert extract_gsm8k("#### 1\nthen\n#### 2,500\nextra") == "2500"
    assert extract_gsm8k("no marker") is None


@pytest.mark.parametrize("pred, ref", [
    (r"\frac{1}{2}", "0.5"),
    (r"\dfrac12", r"\frac{1}{2}"),
    (r"\tfrac{3}{4}", "0.75"),
    ("18 dollars", "18"),
    (r"\$18", "18"),
    (r"18\text{ cm}", "18"),
    (r"5^{\circ}", "5"),
    ("1,234", "1234"),
    ("17.0", "17"),
    (r"(3, \pi/2)", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}"),
    ("x=5", "5"),
    (r"\text{(C)}", "C"),
    ("-3", "-3"),
])
def test_grade_accepts_equivalent_answers(pred, ref):
    assert grade(pred, ref)


@pytest.mark.parametrize("pred, ref", [
    ("18", "17"),
    (r"\frac{1}{3}", "0.333"),
    (r"\frac{2}{3}", r"\frac{3}{2}"),
    ("3", "-3"),
    (None, "5"),
    ("", "5"),
    ("abc", "abd"),
    (r"(3, \pi)", r"\left( 3, \frac{\pi}{2} \right)"),
])
def test_grade_rejects_different_answers(pred, ref):
    assert not grade(pred, ref)


def test_grade_works_off_the_main_thread():
    import threading

    out = []
    t = threading.Thread(target=lambda: out.append(grade(r"\frac{1}{2}", "0.5")))
    t.start()
    t.join()
    assert out == [True]


# ------------------------------------------------------------------ loaders


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gsm8k_and_math_files_are_recognised(tmp_path):
    gsm = _write_jsonl(tmp_path / "gsm.jsonl", [
        {"question": "Ann has 2 apples and buys 3. How many?", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"},
        {"question": "Big?", "answer": "so\n#### 1,200"}])
    ex = load_examples(str(gsm))
    assert [e.answer for e in ex] == ["5", "1200"] and ex[0].question.startswith("Ann")
    assert load_examples("gsm8k", data_file=str(gsm), n=1)[0].answer == "5"
    math = _write_jsonl(tmp_path / "math.jsonl", [
        {"problem": "Half of one?", "solution": r"It is \boxed{\frac12}.", "answer": r"\frac12",
         "unique_id": "test/x/1.json"}])
    (m,) = load_examples(str(math))
    assert (m.id, m.question, m.answer) == ("test/x/1.json", "Half of one?", r"\frac12")
    assert load_examples("math500", data_file=str(math))[0] == m


def test_loader_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2 is not valid JSON"):
        load_examples(str(bad))
    nohash = _write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "no marker"}])
    with pytest.raises(ValueError, match="####"):
        load_examples("gsm8k", data_file=str(nohash))
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no examples"):
        load_examples(str(empty))
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_examples("gsm8k", data_file=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="at least 1"):
        load_examples("toy", n=0)


def test_custom_fields(tmp_path):
    path = _write_jsonl(tmp_path / "c.jsonl", [{"q": "What is 1+1?", "a": 2, "id": "x"}])
    assert load_examples(str(path), question_field="q", answer_field="a") == [Example("x", "What is 1+1?", "2")]


def test_hub_names_go_through_datasets(monkeypatch):
    calls = []

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return [{"question": "Q?", "answer": "work\n#### 7"}] if "gsm" in name else [{"problem": "P?", "answer": "3"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    (g,) = load_examples("gsm8k")
    assert g.answer == "7" and calls[-1] == ("openai/gsm8k", "main", "test")
    load_examples("math500", split="test", n=1)
    assert calls[-1] == ("HuggingFaceH4/MATH-500", None, "test")
    ex = load_examples("someone/my-set", question_field="problem", answer_field="answer", split="train", n=1)
    assert calls[-1] == ("someone/my-set", None, "train") and ex[0].question == "P?"


# ------------------------------------------------------------------ prompts


def test_prompt_styles():
    assert build_messages("Q", "qwen-math") == [{"role": "system", "content": COT_INSTRUCTION},
                                                 {"role": "user", "content": "Q"}]
    assert build_messages("Q", "cot")[0]["content"].endswith("\\boxed{}.")
    assert build_messages("Q", "plain") == [{"role": "user", "content": "Q"}]
    with pytest.raises(ValueError, match="prompt style"):
        build_messages("Q", "fancy")


def test_auto_style_picks_by_model(toy):
    assert resolve_style("auto", toy.target.model) == "plain"  # the shipped trio was trained on bare questions
    qwen = types.SimpleNamespace(name_or_path="Qwen/Qwen2.5-Math-7B-Instruct",
                                 config=types.SimpleNamespace(model_type="qwen2"))
    llama = types.SimpleNamespace(name_or_path="meta-llama/Llama-3.1-8B-Instruct",
                                  config=types.SimpleNamespace(model_type="llama"))
    assert resolve_style("auto", qwen) == "qwen-math" and resolve_style("auto", llama) == "cot"
    assert resolve_style("cot", qwen) == "cot"


# ------------------------------------------------------------------ methods, records, resume


def test_speculative_decoding_matches_target_greedy_and_counts_work(toy):
    ex = toy_examples(4, seed=31)
    prompts = [[{"role": "user", "content": e.question}] for e in ex]
    sd = speculative_decoding(toy, prompts)
    tgt = target_only(toy, prompts)
    assert [r.text for r in sd] == [r.text for r in tgt]  # lossless: the target verifies every token
    for r in sd:
        s = r.stats
        assert s.target_invocations >= 1 and s.draft_steps >= s.accepted_draft_steps > 0
        assert s.target.prefill_tokens == r.num_prompt_tokens and s.target.decode_tokens >= r.num_output_tokens - 1
        assert s.draft.flops > s.draft.paper_flops > 0 and s.target.flops > s.target.paper_flops > 0
        assert s.reward.flops == 0


def test_forwards_inside_generate_are_counted_with_their_cached_prefix(toy):
    """The baselines that run inside transformers' ``generate`` count each forward's attention over the
    tokens already cached (whatever the cache argument is called in the installed transformers)."""
    import torch

    from rsd_core.baselines import _ForwardLog

    model = toy.target.model
    log = _ForwardLog(model)
    try:
        model.generate(torch.tensor([[5, 6, 7, 8]]), max_new_tokens=4, do_sample=False, min_new_tokens=4)
    finally:
        log.close()
    assert log.calls == [(4, 0), (1, 4), (1, 5), (1, 6)]


def test_paper_flops_count_generated_tokens_only(toy):
    # a problem where all three models work (the toy draft is right on most, so look for one the target rewrote)
    results = toy.generate([[{"role": "user", "content": ex.question}] for ex in toy_examples(40, seed=3)])
    r = next(r for r in results if r.stats.target.calls > 0)
    s = r.stats
    for m in (s.draft, s.target, s.reward):
        assert 0 < m.paper_flops < m.flops
    n_draft = toy.draft.cached.flops.n_params
    assert s.draft.paper_flops == 2 * n_draft * s.draft.decode_tokens
    scored = sum(len(toy.reward.format.step_ids(st.text)) for st in r.steps)  # every step it judged, in its layout
    assert s.reward.paper_flops == 2 * toy.reward.cached.flops.n_params * scored


def test_method_names_are_checked_before_any_work(toy):
    from rsd_core.eval.runner import parse_method

    for bad, msg in (("rsd:1.5", "δ must lie"), ("bon:x", "bad argument"), ("majority:0", "bad argument"),
                     ("sd:0", "bad argument"), ("beam", "unknown method")):
        with pytest.raises(ValueError, match=msg):
            parse_method(bad, toy.config)
    assert expand_methods(["target", "rsd", "rsd:0.5"], [0.5, 0.9]) == ["target", "rsd:0.5", "rsd:0.9"]


def _strip_wall(summary):
    return {m: {k: v for k, v in s.items() if not k.startswith("wall")} for m, s in summary.items()}


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_summary(toy, tmp_path):
    examples = toy_examples(10, seed=99)
    methods = ["target", "rsd:0.6", "sd"]
    meta = {"dataset": "toy", "config": toy.config.model_dump(mode="json")}
    whole = evaluate(toy, examples, methods, batch_size=4, progress=False, records=RecordStore(tmp_path / "a.jsonl", meta))

    path = tmp_path / "b.jsonl"
    seen = []

    def stop_after_six(rec):
        seen.append(rec)
        if len(seen) == 6:
            raise KeyboardInterrupt  # killed between records

    with pytest.raises(KeyboardInterrupt):
        evaluate(toy, examples, methods, batch_size=4, progress=False, records=RecordStore(path, meta),
                 on_record=stop_after_six)
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 8  # the header and two whole batches: nothing finished was lost
    with open(path, "a") as f:
        f.write(lines[-1][: len(lines[-1]) // 2])  # and a record cut off mid-write by a kill
    resumed = evaluate(toy, examples, methods, batch_size=4, progress=False, records=RecordStore(path, meta))
    assert _strip_wall(resumed) == _strip_wall(whole)
    rows = [json.loads(x) for x in path.read_text().splitlines()[1:]]
    keys = [(r["method"], r["id"]) for r in rows]
    assert len(keys) == len(set(keys)) == len(methods) * len(examples)  # none lost, none twice

    again = evaluate(toy, examples, methods, progress=False, records=RecordStore(path, meta),
                     on_record=lambda r: pytest.fail("a finished problem was run again"))
    assert _strip_wall(again) == _strip_wall(whole)


def test_records_of_another_run_are_refused(toy, tmp_path):
    path = tmp_path / "r.jsonl"
    RecordStore(path, {"dataset": "toy", "config": {"threshold": 0.7}})
    with pytest.raises(ValueError, match=r"another run: config\.threshold is 0\.5 now, 0\.7 in the file.*--overwrite"):
        RecordStore(path, {"dataset": "toy", "config": {"threshold": 0.5}})
    assert RecordStore(path, {"dataset": "toy", "config": {"threshold": 0.5}}, overwrite=True).records == {}
    junk = tmp_path / "junk.jsonl"
    junk.write_text('{"method": "x", "id": "1"}\n')
    with pytest.raises(ValueError, match="run header"):
        RecordStore(junk, {"dataset": "toy"})


def test_summary_reports_both_flops_counts(toy):
    s = evaluate(toy, toy_examples(6, seed=5), ["target", "rsd"], progress=False)
    for row in s.values():
        assert 0 < row["paper_flops_per_question"] < row["flops_per_question"]
        assert row["paper_flops"]["total"] == pytest.approx(sum(row["paper_flops"][m] for m in MODELS))
    assert s["rsd"]["delta"] == toy.config.threshold and s["target"]["delta"] == 1.0
    assert 0 <= s["rsd"]["target_step_rate"] <= 1 and s["target"]["target_step_rate"] == 1.0
    table = markdown_table(s)
    assert "FLOPs/q (paper)" in table and "FLOPs/q (full)" in table and table.count("\n") == 3


@pytest.mark.slow
def test_cli_eval_then_plot_writes_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    out = tmp_path / "run"
    args = ["eval", "--dataset", "toy", "--n", "8", "--methods", "target,draft,rsd", "--deltas", "0.3,0.9",
            "--out", str(out), "--no-progress"]
    assert cli_main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [m["method"] for m in summary["methods"]] == ["target", "draft", "rsd:0.3", "rsd:0.9"]
    assert (out / "summary.md").read_text().startswith("| method |")
    assert cli_main(args) == 0  # a rerun resumes: nothing to do, same results
    assert len((out / "records.jsonl").read_text().splitlines()) == 1 + 4 * 8
    assert cli_main(["plot", str(out)]) == 0
    for name in ("accuracy_vs_flops.png", "delta_sweep.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        img = imread(out / name)
        assert img.shape[0] > 300 and img.shape[1] > 500 and img[..., :3].std() > 0.05  # not blank


def test_cli_eval_rejects_bad_options_before_loading(capsys, tmp_path):
    assert cli_main(["eval", "--methods", "rsd:2"]) == 2
    assert "δ must lie" in capsys.readouterr().err
    assert cli_main(["eval", "--dataset", str(tmp_path / "none.jsonl")]) == 2
    assert "unknown dataset" in capsys.readouterr().err
    assert cli_main(["plot", str(tmp_path)]) == 2
    assert "no summary" in capsys.readouterr().err


@pytest.mark.slow
def test_a_second_process_writing_the_same_records_is_refused(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "r.jsonl"
    code = ("import sys, time\nfrom rsd_core.eval.runner import RecordStore\n"
            f"RecordStore({str(path)!r}, {{'dataset': 'toy'}})\nprint('held', flush=True)\ntime.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        from rsd_core.eval.runner import RecordsInUseError

        with pytest.raises(RecordsInUseError, match=rf"another rsd eval \(pid {holder.pid}\)"):
            RecordStore(path, {"dataset": "toy"})
    finally:
        holder.kill()
        holder.wait()
    assert RecordStore(path, {"dataset": "toy"}).records == {}  # the lock went with the process


def test_cli_errors_name_the_flags_and_interrupts_are_one_line(capsys, monkeypatch):
    from rsd_core import cli

    assert cli.main(["generate", "x", "--threshold", "1.5"]) == 2
    assert "--threshold 1.5: input should be less than or equal to 1" in capsys.readouterr().err
    assert cli.main(["generate", "x", "--draft", "a"]) == 2
    assert "name both --draft and --target" in capsys.readouterr().err

    def interrupted(a):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_eval", interrupted)
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["eval"].set_defaults(fn=interrupted)
    assert cli.main(["eval", "--out", "somewhere"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "rsd eval: interrupted (rerun the same command to resume)"


def test_a_hub_dataset_that_cannot_be_loaded_points_to_data_file(monkeypatch):
    import sys
    import types

    from rsd_core.eval.datasets import load_examples

    fake = types.ModuleType("datasets")

    def load_dataset(*a, **k):
        raise ConnectionError("no network")

    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(FileNotFoundError, match="--data-file"):
        load_examples("gsm8k", 3)


@pytest.mark.parametrize("case", ["close", "docs"])
def test_accuracy_plot_labels_neither_overlap_nor_cover_points_nor_leave_the_figure(case):
    """Close RSD points at several δ (the case that printed 'rsd:0.3:0.95 0.7' cut at the edge), and the
    δ sweep in docs/evaluation.md (a long group label once ran over the target's point)."""
    pytest.importorskip("matplotlib")
    import json
    from pathlib import Path

    from rsd_core.eval.plot import _pyplot, accuracy_figure

    if case == "close":
        rows = [{"method": m, "accuracy": a, "paper_flops_per_question": x, "flops_per_question": 2 * x}
                for m, a, x in (("target", 0.92, 8e7), ("draft", 0.67, 4.5e7), ("rsd:0.3", 0.917, 1.40e8),
                                ("rsd:0.7", 0.917, 1.46e8), ("rsd:0.95", 0.917, 1.52e8), ("rsd:0.5", 0.91, 1.43e8))]
    else:
        rows = json.loads((Path(__file__).parents[1] / "docs/results/toy-eval/summary.json").read_text())["methods"]
    plt = _pyplot()
    fig = accuracy_figure(plt, {"methods": rows, "dataset": "toy", "n": 12})
    fig.tight_layout()  # as _save does before writing the PNG
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax, key in zip(fig.axes, ("paper_flops_per_question", "flops_per_question")):
        frame = ax.get_window_extent(renderer)
        boxes = [t.get_window_extent(renderer) for t in ax.texts]
        assert boxes, "every point is labelled"
        points = [ax.transData.transform((r[key], r["accuracy"])) for r in rows if r.get(key)]
        for i, a in enumerate(boxes):
            assert frame.x0 <= a.x0 and a.x1 <= frame.x1 and frame.y0 <= a.y0 and a.y1 <= frame.y1
            assert not any(a.x0 <= x <= a.x1 and a.y0 <= y <= a.y1 for x, y in points), ax.texts[i].get_text()
            for b in boxes[i + 1:]:
                assert not a.overlaps(b), [t.get_text() for t in ax.texts]
    plt.close(fig)
    assert "RSD δ=" in " ".join(t.get_text() for t in fig.axes[0].texts)


def test_the_cli_flags_are_the_integrations_options(monkeypatch):
    """One options model: every model and decoding flag of ``rsd`` is an ``RSDOptions`` field, typed,
    described and validated by it, and reaches the decoder as ``ChatRSD``'s same option does."""
    from rsd_core import cli
    from rsd_core.options import CLI_FLAGS, RSDOptions
    from rsd_integrations.langchain import ChatRSD

    ap = cli.build_parser()
    gen = ap._subparsers._group_actions[0].choices["generate"]
    by_dest = {a.dest: a for a in gen._actions}
    for name, flags in CLI_FLAGS.items():
        field = RSDOptions.model_fields[name]
        assert by_dest[name].option_strings == list(flags) and by_dest[name].help, name
        assert field.description and (field.description in by_dest[name].help or name in ("model", "max_tokens"))
    argv = ["generate", "x", "--threshold", "0.4", "--weighting", "clip", "--temperature", "0.5", "--top-p", "0.9",
            "--seed", "7", "--max-steps", "9", "--max-step-tokens", "33", "--max-new-tokens", "77",
            "--reward-option", 'step_token="\\n\\n"', "--reward-option", "good=yes", "--dtype", "float32"]
    a = ap.parse_args(argv)
    opts, cfg = cli._options(a)
    same = ChatRSD(threshold=0.4, weighting="clip", temperature=0.5, top_p=0.9, seed=7, max_steps=9,
                   max_step_tokens=33, max_tokens=77, reward_options={"step_token": "\n\n", "good": "yes"},
                   dtype="float32")
    assert cfg == same.to_config(cfg.model_copy())
    assert opts.model_spec() == same.model_spec()
    assert opts.reward_options == {"step_token": "\n\n", "good": "yes"}
    assert cli._options(ap.parse_args(["generate", "x"]))[1].max_new_tokens == 1024  # the command's own default


@pytest.mark.parametrize("argv, said", [
    (["--top-p", "0"], "--top-p 0.0: input should be greater than 0"),
    (["--seed", "-1"], "--seed -1: input should be greater than or equal to 0"),
    (["--max-steps", "0"], "--max-steps 0: input should be greater than or equal to 1"),
    (["--reward-option", "novalue"], "--reward-option 'novalue': takes KEY=VALUE"),
])
def test_a_bad_flag_value_is_named_as_typed_before_any_model_loads(capsys, argv, said):
    from rsd_core import cli

    assert cli.main(["generate", "x", *argv]) == 2
    assert said in capsys.readouterr().err


def test_an_option_the_reward_family_lacks_is_named():
    from rsd_core.rewards import load_reward_model
    from rsd_core.toy import toy_model_paths

    with pytest.raises(ValueError, match="'likelihood' reward family .* has no option 'step_token'"):
        load_reward_model(toy_model_paths()["prm"], step_token="\n")


def test_help_shows_the_defaults_that_exist(capsys):
    """``rsd eval --help`` names each option's default, and says nothing for options left unset."""
    from rsd_core import cli

    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: toy)" in text and "(default: target,draft,rsd)" in text and "(default: 0.7)" in text
    assert "default: None" not in text and "default: False" not in text
