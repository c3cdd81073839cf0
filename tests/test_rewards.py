"""Every reward-model family, on tiny random checkpoints saved in that family's format."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, Qwen2ForCausalLM, Qwen2ForSequenceClassification, Qwen2ForTokenClassification

from rsd_core import RewardGuidedDecoder, RSDConfig
from rsd_core.backends.hf import HFGenerator
from rsd_core.errors import ModelLoadError, UnknownRewardModelError
from rsd_core.rewards import (
    ChatPRM,
    LikelihoodPRM,
    LLMJudge,
    MathShepherdPRM,
    OutcomeRM,
    StepTagPRM,
    ValueHeadPRM,
    detect_reward_type,
    load_reward_model,
)
from rsd_core.rewards.arithmetic import arithmetic_reward, check_equations

from tiny_models import tiny_config

CONV = [{"role": "user", "content": "Ann has 12 apples. She buys 5 more. She gives away 3. How many now?"}]
STEPS = ["12 + 5 = 17\n\n", "17 - 3 = 14\n\n", "The answer is \\boxed{14}."]


def _save(model, tok, path: Path) -> str:
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def family_paths(tmp_path_factory, toy_tokenizer):
    root = tmp_path_factory.mktemp("families")
    torch.manual_seed(0)
    out = {}
    # step-tag classifier, format declared by architecture only (auto-detected)
    out["step_tag"] = _save(Qwen2ForTokenClassification(tiny_config(toy_tokenizer, num_labels=2)), toy_tokenizer,
                            root / "step_tag")
    # value head (Skywork): causal-LM weights plus v_head.summary.* in the same safetensors
    vh = Qwen2ForCausalLM(tiny_config(toy_tokenizer))
    path = root / "value_head"
    _save(vh, toy_tokenizer, path)
    f = path / "model.safetensors"
    weights = load_file(str(f))
    weights["v_head.summary.weight"] = torch.randn(1, 32)
    weights["v_head.summary.bias"] = torch.randn(1)
    save_file(weights, str(f), metadata={"format": "pt"})
    out["value_head"] = str(path)
    # Math-Shepherd: a causal LM whose tokenizer knows the step tag "ки"
    tok = copy.deepcopy(toy_tokenizer)
    tok.add_tokens(["ки"])
    ms = Qwen2ForCausalLM(tiny_config(tok))
    out["math_shepherd"] = _save(ms, tok, root / "math_shepherd")
    # a chat model for the RLHFlow-style PRM and the judge ("Yes"/"No" as single tokens)
    tok = copy.deepcopy(toy_tokenizer)
    tok.add_tokens(["Yes", "No"])
    out["chat"] = _save(Qwen2ForCausalLM(tiny_config(tok)), tok, root / "chat")
    # an outcome reward model: a one-label sequence classifier
    orm = Qwen2ForSequenceClassification(tiny_config(toy_tokenizer, num_labels=1))
    out["orm"] = _save(orm, toy_tokenizer, root / "orm")
    # a causal LM with nothing that marks it as a PRM
    out["plain_lm"] = _save(Qwen2ForCausalLM(tiny_config(toy_tokenizer)), toy_tokenizer, root / "plain_lm")
    return out


def build(family, paths):
    if family == "chat_prm":
        return load_reward_model(paths["chat"], reward_type="chat_prm")
    if family == "llm_judge":
        return load_reward_model(paths["chat"], reward_type="llm_judge")
    if family == "likelihood":
        return load_reward_model(paths["plain_lm"], reward_type="likelihood")
    return load_reward_model(paths[family])


FAMILIES = ["step_tag", "value_head", "math_shepherd", "chat_prm", "llm_judge", "likelihood", "orm"]
KIND = {"step_tag": StepTagPRM, "value_head": ValueHeadPRM, "math_shepherd": MathShepherdPRM, "chat_prm": ChatPRM,
        "llm_judge": LLMJudge, "likelihood": LikelihoodPRM, "orm": OutcomeRM}


@pytest.mark.parametrize("family", FAMILIES)
def test_incremental_scoring_equals_scoring_from_scratch(family_paths, family):
    rm = build(family, family_paths)
    assert isinstance(rm, KIND[family])
    rm.start(0, CONV)
    incremental = [rm.score([0], [s])[0] for s in STEPS]
    reference = rm.score_solution(CONV, STEPS)
    assert incremental == pytest.approx(reference, abs=1e-4)
    assert all(0.0 <= r <= 1.0 for r in incremental)
    # one forward per step, over that step only (plus the header, once)
    assert rm.usage(0).calls == len(STEPS)


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_scoring_equals_one_by_one_and_rollback_restores(family_paths, family):
    rm = build(family, family_paths)
    convs = [CONV, [{"role": "user", "content": "Ben has 3 pens."}]]
    for i, c in enumerate(convs):
        rm.start(i, c)
    batched = [rm.score([0, 1], [s, s]) for s in STEPS[:2]]
    rm.rollback([0])
    again = rm.score([0], [STEPS[1]])[0]
    assert again == pytest.approx(batched[1][0], abs=1e-4)
    for i, c in enumerate(convs):
        rm.start(10 + i, c)
        alone = [rm.score([10 + i], [s])[0] for s in STEPS[:2]]
        assert alone == pytest.approx([b[i] for b in batched], abs=1e-4)
    rm.release([0, 1, 10, 11])


def test_step_tag_reward_is_read_at_the_tag(family_paths):
    rm = build("step_tag", family_paths)
    ids = rm.format.header_ids(CONV) + rm.format.step_ids(CONV, [], STEPS[0])
    assert ids[-1] == rm.format.tag_id
    logits = rm.model(input_ids=torch.tensor([ids])).logits[0, -1]
    rm.start(0, CONV)
    assert rm.score([0], [STEPS[0]])[0] == pytest.approx(torch.softmax(logits, -1)[1].item(), abs=1e-5)


def test_value_head_reads_sigmoid_at_the_separator(family_paths):
    rm = build("value_head", family_paths)
    ids = rm.format.header_ids(CONV) + rm.format.step_ids(CONV, [], STEPS[0])
    assert ids[-1] == rm.format.step_token_id
    value = rm.model(input_ids=torch.tensor([ids])).logits[0, -1, 0]
    rm.start(0, CONV)
    assert rm.score([0], [STEPS[0]])[0] == pytest.approx(torch.sigmoid(value).item(), abs=1e-5)


@pytest.mark.parametrize("family", ["step_tag", "value_head", "math_shepherd", "orm"])
def test_auto_detection_picks_the_family(family_paths, family):
    assert detect_reward_type(family_paths[family]) == family


def test_unknown_or_misformatted_checkpoints_get_clear_errors(family_paths, tmp_path):
    with pytest.raises(UnknownRewardModelError, match="reward_type"):
        load_reward_model(family_paths["plain_lm"])
    with pytest.raises(ModelLoadError, match="v_head"):
        load_reward_model(family_paths["plain_lm"], reward_type="value_head")
    with pytest.raises(ValueError, match="step tag"):
        load_reward_model(family_paths["plain_lm"], reward_type="math_shepherd")
    with pytest.raises(ValueError, match="unknown reward_type"):
        load_reward_model(family_paths["plain_lm"], reward_type="nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        load_reward_model(str(tmp_path / "empty"))


@pytest.mark.parametrize("family", FAMILIES + ["arithmetic"])
def test_rsd_runs_end_to_end_with_each_family(tiny_paths, family_paths, family):
    reward = "arithmetic" if family == "arithmetic" else build(family, family_paths)
    dec = RewardGuidedDecoder(HFGenerator.from_pretrained(tiny_paths["draft"]),
                              HFGenerator.from_pretrained(tiny_paths["target"]), reward,
                              RSDConfig(max_new_tokens=30, max_step_tokens=8, threshold=0.5))
    res = dec.generate(["Ann has 12 apples.", [{"role": "user", "content": "Ben has 3 pens."}]])
    for r in res:
        drafts = [s for s in r.steps if s.source == "draft"]
        assert drafts and all(s.reward is not None and 0 <= s.reward <= 1 for s in drafts)
        assert all(s.accepted == (s.reward >= 0.5) for s in drafts)
        assert r.text == "".join(s.text for s in r.accepted_steps)


def test_outcome_model_scores_the_answer_so_far_and_picks_best_of_n(tiny_paths, family_paths, monkeypatch):
    from rsd_core import baselines
    from rsd_core.baselines import best_of_n

    groups: list = []
    samples = baselines._samples
    monkeypatch.setattr(baselines, "_samples", lambda *a, **k: [groups.append(g) or g for g in samples(*a, **k)])

    rm = build("orm", family_paths)
    text = rm.tokenizer.apply_chat_template(CONV + [{"role": "assistant", "content": STEPS[0]}], tokenize=False)
    logit = rm.model(input_ids=torch.tensor([rm.format.encode(text)])).logits[0, 0]
    rm.start(0, CONV)
    assert rm.score([0], [STEPS[0]])[0] == pytest.approx(torch.sigmoid(logit).item(), abs=1e-5)
    dec = RewardGuidedDecoder(HFGenerator.from_pretrained(tiny_paths["draft"]),
                              HFGenerator.from_pretrained(tiny_paths["target"]), rm,
                              RSDConfig(max_new_tokens=20, max_step_tokens=8, seed=1))
    best = best_of_n(dec, ["Ann has 12 apples."], n=3, aggregate="last")[0]
    [group] = groups
    lasts = [r.accepted_steps[-1].reward for r in group]
    assert all(isinstance(x, float) for x in lasts) and len(group) == 3
    assert best.accepted_steps[-1].reward == max(lasts)  # the ORM's score of the whole answer picks it
    assert best.text == group[lasts.index(max(lasts))].text


def test_judge_can_reuse_the_loaded_target(tiny_paths, family_paths):
    dec = RewardGuidedDecoder.from_pretrained(tiny_paths["draft"], family_paths["chat"], family_paths["chat"],
                                              reward_type="llm_judge")
    assert isinstance(dec.reward, LLMJudge) and dec.reward.model is dec.target.model


def test_arithmetic_checker_is_exact_and_safe():
    assert check_equations("12 + 5 = 17, 3 * 4 = 12, 10 / 4 = 2.5, 2 ^ 10 = 1024") == (4, 4)
    assert arithmetic_reward("", [], "7 - 10 = -3") == 1.0 and arithmetic_reward("", [], "7 - 10 = 3") == 0.0
    assert arithmetic_reward("", [], "9 ^ 123456789 = 1") == 0.0  # refused, not computed
    assert arithmetic_reward("", [], "1 / 0 = 1") == 0.0
    assert arithmetic_reward("", [], "no equations here") == 0.5
    assert arithmetic_reward("", [], "__import__('os').system('x') = 1") == 0.5  # never evaluated


def test_likelihood_reward_is_the_smallest_token_probability(family_paths):
    rm = build("likelihood", family_paths)
    ids = rm.format.header_ids(CONV)
    step = rm.format.step_ids(STEPS[0])
    logp = torch.log_softmax(rm.model(input_ids=torch.tensor([ids + step])).logits[0], -1)
    expected = min(logp[len(ids) - 1 + j, t].exp().item() for j, t in enumerate(step))
    rm.start(0, CONV)
    assert rm.score([0], [STEPS[0]])[0] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("empty_at", [0, 1])
def test_likelihood_prm_scores_an_empty_step_as_one_and_goes_on(family_paths, empty_at):
    """A step of no tokens (a model that ended at once: its text is empty) has none the PRM finds
    unlikely; it reads nothing for it, and the steps around it score as they would without it."""
    rm, ref = build("likelihood", family_paths), build("likelihood", family_paths)
    steps = list(STEPS[:2])
    rm.start(0, CONV), rm.start(1, CONV), ref.start(0, CONV)
    got = []
    for i, st in enumerate(steps):
        if i == empty_at:
            assert rm.score([0, 1], ["", st])[0] == 1.0
            rm.rollback([1])
        got.append(rm.score([0], [st])[0])
    assert got == pytest.approx([ref.score([0], [st])[0] for st in steps], abs=1e-5)
    rm.rollback([0])
    assert rm.score([0], [steps[-1]])[0] == pytest.approx(got[-1], abs=1e-5)
    for _ in range(len(steps) + 1):  # every step rolled back, the empty one too
        rm.rollback([0])
    assert rm.score([0], [steps[0]])[0] == pytest.approx(got[0], abs=1e-5)


def test_tokenizer_of_families_loads_as_transformers_does(family_paths):
    tok = AutoTokenizer.from_pretrained(family_paths["math_shepherd"])
    assert "ки" in tok.get_vocab()
