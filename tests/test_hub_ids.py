"""Hub ids behave like local paths: the real ids, resolved offline from a hub cache that holds the replicas.

The cache is laid out as ``huggingface_hub`` writes it (``models--Org--Name/snapshots/<rev>/...``,
``refs/main``); each command runs in a fresh process with ``HF_HUB_CACHE`` pointing at it and
``HF_HUB_OFFLINE=1``, exactly as a user whose cache already holds the checkpoints. The commands are
read out of README.md and docs/evaluation.md, so the docs are what is tested.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from replicas.checkpoints import REPLICAS, REVISION, lay_out_hub_cache

from rsd_core.rewards import load_reward_model

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
PRM_IDS = ["Qwen/Qwen2.5-Math-PRM-7B", "Skywork/Skywork-o1-Open-PRM-Qwen-2.5-1.5B",
           "Skywork/Skywork-o1-Open-PRM-Qwen-2.5-7B", "peiyi9979/math-shepherd-mistral-7b-prm"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    built = {repo: build(root / "src" / repo.replace("/", "__")) for repo, build in REPLICAS.items()}
    cache = lay_out_hub_cache(root / "cache", built)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env |= {"HF_HUB_CACHE": str(cache), "HF_HOME": str(root / "hf_home"), "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(ROOT)}
    data = root / "data"
    data.mkdir()
    (data / "gsm8k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "Ann has 12 apples. She buys 5 more. How many apples does Ann have now?",
         "answer": "12 + 5 = <<12+5=17>>17\n#### 17"},
        {"question": "Ben has 9 pens and gives away 4. How many pens does he have left?",
         "answer": "9 - 4 = <<9-4=5>>5\n#### 5"}]))
    (data / "math500.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"problem": "What is $2^{10} - 24$?", "answer": "1000", "unique_id": "a"},
        {"problem": "Compute $7 \\times 8$.", "answer": "56", "unique_id": "b"}]))
    return {"cache": cache, "env": env, "src": built, "data": data, "root": root}


def _run(hub, args, cwd, timeout=900):
    return subprocess.run(args, cwd=cwd, env=hub["env"], capture_output=True, text=True, timeout=timeout)


def _block(doc: Path, must_contain: str, lang: str) -> str:
    for block in re.findall(rf"```{lang}\n(.*?)```", doc.read_text(), flags=re.S):
        if must_contain in block:
            return block
    raise AssertionError(f"no {lang} block with {must_contain!r} in {doc}")


def test_prm_hub_ids_detect_load_and_score_as_their_local_replicas(hub, tmp_path):
    script = (
        "import json\n"
        "from rsd_core.rewards import detect_reward_type, load_reward_model\n"
        "conv = [{'role': 'user', 'content': 'What is 12 + 5?'}]\n"
        "out = {}\n"
        f"for rid in {PRM_IDS!r}:\n"
        f"    rm = load_reward_model(rid, revision={REVISION!r})\n"
        "    rm.start(0, conv)\n"
        "    out[rid] = [detect_reward_type(rid), type(rm).__name__, rm.score([0], ['12 + 5 = 17\\n\\n'])[0]]\n"
        "print(json.dumps(out))\n")
    r = _run(hub, [sys.executable, "-c", script], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    conv = [{"role": "user", "content": "What is 12 + 5?"}]
    for rid in PRM_IDS:
        local = load_reward_model(str(hub["src"][rid]))
        local.start(0, conv)
        assert got[rid][1] == type(local).__name__
        assert got[rid][2] == pytest.approx(local.score([0], ["12 + 5 = 17\n\n"])[0], abs=1e-5)
    assert [v[0] for v in got.values()] == ["step_tag", "value_head", "value_head", "math_shepherd"]


@pytest.mark.parametrize("doc,expect", [("README.md", "StepEvent"), ("docs/quickstart.md", "")])
def test_python_examples_run_as_written_on_the_hub_ids(hub, tmp_path, doc, expect):
    code = _block(ROOT / doc, "Qwen/Qwen2.5-Math-PRM-7B", "python")
    r = _run(hub, [sys.executable, "-c", code], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert expect in r.stdout  # README's callbacks print every step event


def _docs_eval_script(hub) -> str:
    block = _block(ROOT / "docs" / "evaluation.md", "Skywork/Skywork-o1-Open-PRM-Qwen-2.5-1.5B", "bash")
    lines = [ln for ln in block.splitlines() if not ln.startswith("pip install")]
    script = "\n".join(lines)
    # No GPU here, and two questions per dataset from local copies, 40 tokens each: the rest as written.
    assert "--device-map cuda" in script and "--out runs/$DS-1.5b-7b\n" in script
    script = script.replace("--device-map cuda", "--device-map cpu").replace(
        "--out runs/$DS-1.5b-7b\n", f"--out runs/$DS-1.5b-7b --n 2 --max-new-tokens 40 --no-progress "
                                     f"--data-file {hub['data']}/$DS.jsonl\n")
    return "set -e\n" + script


def test_docs_evaluation_commands_run_as_written_on_the_hub_ids(hub, tmp_path):
    r = _run(hub, ["bash", "-c", _docs_eval_script(hub)], tmp_path, timeout=1800)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    for ds in ("math500", "gsm8k"):
        summary = json.loads((tmp_path / "runs" / f"{ds}-1.5b-7b" / "summary.json").read_text())
        methods = {m["method"] for m in summary["methods"]}
        assert {"target", "draft", "rsd:0.7", "bon:8"} <= methods, methods
        assert list((tmp_path / "runs" / f"{ds}-1.5b-7b").glob("*.png"))


@pytest.mark.parametrize("reward,extra", [("Qwen/Qwen2.5-Math-PRM-7B", []),
                                          ("Qwen/Qwen2.5-Math-PRM-7B", ["--trust-remote-code"]),
                                          ("peiyi9979/math-shepherd-mistral-7b-prm", [])])
def test_rsd_generate_with_each_prm_hub_id(hub, tmp_path, reward, extra):
    r = _run(hub, [str(Path(sys.executable).parent / "rsd"), "generate", "What is 12 + 5?", "--draft", "Qwen/Qwen2.5-Math-1.5B-Instruct",
                   "--target", "Qwen/Qwen2.5-Math-7B-Instruct", "--reward", reward, *extra,
                   "--max-new-tokens", "24", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    steps = json.loads(r.stdout)["steps"]
    drafted = [s for s in steps if s["source"] == "draft"]
    assert drafted and all(0.0 <= s["reward"] <= 1.0 for s in drafted)


def test_a_hub_id_missing_from_the_offline_cache_says_so(hub, tmp_path):
    r = _run(hub, [sys.executable, "-c", "from rsd_core.rewards import load_reward_model\n"
                                         "load_reward_model('Nobody/no-such-prm')"], tmp_path)
    assert r.returncode != 0
    assert "not in the hub cache" in r.stderr and "Nobody/no-such-prm" in r.stderr


def test_without_a_reachable_hub_hub_ids_come_from_the_cache_at_once(hub, tmp_path):
    """HF_HUB_OFFLINE unset and the hub's endpoint closed: a cached id loads from the cache, a missing
    one fails with the hint, and neither goes through huggingface_hub's retries."""
    env = {k: v for k, v in hub["env"].items() if k != "HF_HUB_OFFLINE"} | {"HF_ENDPOINT": "http://127.0.0.1:9"}
    script = ("from rsd_core.rewards import load_reward_model\n"
              "rm = load_reward_model('Qwen/Qwen2.5-Math-PRM-7B')\n"
              "rm.start(0, [{'role': 'user', 'content': '1 + 1?'}])\n"
              "print('reward', rm.score([0], ['1 + 1 = 2\\n\\n'])[0])\n"
              "load_reward_model('Nobody/no-such-prm')\n")
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=900)
    assert "reward " in r.stdout, r.stderr[-2000:]
    assert r.returncode != 0 and "Nobody/no-such-prm" in r.stderr and "cannot be reached" in r.stderr
    assert "to skip the check" in r.stderr  # it looked in the cache only: the hub was found unreachable first
    assert "Retry" not in r.stderr and "retry" not in r.stderr.lower().replace("retries", "")



DOC_PAGES = sorted(p.relative_to(ROOT).as_posix() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
                   if "```python" in p.read_text())


@pytest.mark.parametrize("doc", DOC_PAGES)
def test_every_python_block_of_the_docs_runs_as_written(hub, tmp_path, doc):
    """Each page's Python blocks, in order, in one session, as a reader runs them: hub ids resolve to
    the replicas in the offline cache; ``./my-prm`` (docs/reward-models.md) is a local copy of one."""
    from doc_blocks import NEEDS_SERVERS, python_blocks

    (tmp_path / "my-prm").symlink_to(hub["src"]["Skywork/Skywork-o1-Open-PRM-Qwen-2.5-1.5B"])
    r = _run(hub, [sys.executable, str(ROOT / "tests" / "doc_blocks.py"), str(ROOT / doc)], tmp_path)
    assert r.returncode == 0, (r.stdout[-1500:], r.stderr[-3000:])
    blocks = python_blocks(ROOT / doc)
    expected = [f"block {i} " + ("skipped (needs vLLM servers)" if NEEDS_SERVERS in b else "ok")
                for i, b in enumerate(blocks)]
    assert [ln for ln in r.stdout.splitlines() if ln.startswith("block ")] == expected
    assert sum(NEEDS_SERVERS not in b for b in blocks) >= 1 or doc == "docs/scaling.md"
    for said in DOC_OUTPUTS.get(doc, ()):  # what a page's comments say the toy prints, it prints
        assert said in r.stdout, (said, r.stdout[-1500:])


DOC_OUTPUTS = {"README.md": ["The answer is \\boxed{14}."],
               "docs/quickstart.md": ["The answer is \\boxed{17}.", "The answer is \\boxed{57}."]}
