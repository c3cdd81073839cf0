"""Golden tests: every reward-model family scores exactly as its model card's reference procedure.

Each test builds a tiny random-weight replica in the real checkpoint's hub layout (``tests/replicas``),
scores a solution with the library (incrementally, one step at a time, over a KV cache), and compares
id for id and reward for reward with a reference scorer written here from the model card's code. The
reference shares no code with the library: it tokenizes the whole solution at once, runs one plain
forward, and reads the scores where the card reads them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from replicas import checkpoints as rep
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

from rsd_core.errors import ModelLoadError
from rsd_core.rewards import (
    ChatPRM,
    MathShepherdPRM,
    StepTagPRM,
    ValueHeadPRM,
    detect_reward_type,
    load_reward_model,
)

QUESTION = "Janet has 12 apples. She buys 5 more, then gives away 3. How many apples does she have now?"
# What the decoder hands the PRM: steps as written, each ending with the "\n\n" delimiter but the last;
# one step spans two lines, one starts with a word, one with a number.
STEPS = ["She buys 5 more.\n12 + 5 = 17\n\n", "17 - 3 = 14, so she has 14 apples left.\n\n",
         "The answer is \\boxed{14}."]
CONV = [{"role": "user", "content": QUESTION}]
RESPONSE = "".join(STEPS)


def library_scores(rm, steps=STEPS):
    rm.start(0, CONV)
    rewards = [rm.score([0], [s])[0] for s in steps]
    ids = list(rm.cached.states[0].ids)
    rm.release([0])
    return ids, rewards


def positions(ids, token):
    return [i for i, t in enumerate(ids) if t == token]


@pytest.fixture(scope="module")
def replica_root(tmp_path_factory):
    return tmp_path_factory.mktemp("replicas")


def _built(root: Path, name: str, build) -> Path:
    folder = root / name
    if not (folder / "config.json").is_file():
        build(folder)
    return folder


# ------------------------------------------------------------------------------ Qwen2.5-Math-PRM


def qwen_prm_reference(folder: Path, question: str, response: str):
    """The model card: system + user + assistant "<extra_0>".join(steps) + "<extra_0>", one string, the
    checkpoint's own class (trust_remote_code), softmax over 2 labels at each <extra_0>, index 1."""
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    steps = response.split("\n\n")
    messages = [{"role": "system", "content": "Please reason step by step, and put your final answer within \\boxed{}."},
                {"role": "user", "content": question},
                {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    ids = tok.encode(text)
    step_sep_id = tok.encode("<extra_0>")[0]
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    at = positions(ids, step_sep_id)
    return ids[: at[-1] + 1], [probs[i, 1].item() for i in at]


@pytest.fixture(scope="module")
def qwen_prm(replica_root):
    return _built(replica_root, "qwen_prm", rep.qwen_math_prm)


@pytest.mark.parametrize("trust_remote_code", [False, True], ids=["native-head", "remote-code"])
def test_qwen_math_prm_scores_as_its_model_card(qwen_prm, trust_remote_code):
    ref_ids, ref_rewards = qwen_prm_reference(qwen_prm, QUESTION, RESPONSE)
    rm = load_reward_model(str(qwen_prm), trust_remote_code=trust_remote_code)
    assert isinstance(rm, StepTagPRM)
    assert type(rm.model).__name__ == ("Qwen2ForProcessRewardModel" if trust_remote_code else
                                       "Qwen2ProcessRewardHead")
    ids, rewards = library_scores(rm)
    assert ids == ref_ids
    assert rewards == pytest.approx(ref_rewards, abs=1e-5)
    assert max(ref_rewards) - min(ref_rewards) > 1e-3  # the head is real: the rewards differ by step


def test_qwen_math_prm_plain_token_classifier_route_is_refused(qwen_prm):
    """What loading it as a plain Qwen2ForTokenClassification used to do: a random head, silently."""
    with pytest.raises(ModelLoadError, match=r"score\.weight|score\.0\.weight"):
        from rsd_core.runtime.loading import load_pretrained

        load_pretrained(AutoModelForTokenClassification, str(qwen_prm))


# ------------------------------------------------------------------------------ Skywork-o1-Open-PRM


def skywork_reference(folder: Path, problem: str, response: str, step_token: str):
    """Skywork's prepare_input + PRM_MODEL: bos + problem + "\\n", then encode(piece) + [step id] for each
    piece of response.split(step_token); sigmoid(v_head.summary(last hidden state)) at the step ids."""
    tok = AutoTokenizer.from_pretrained(folder)
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    if (folder / "pytorch_model.bin").is_file():
        weights = torch.load(folder / "pytorch_model.bin", weights_only=True)
    else:
        from safetensors.torch import load_file

        weights = load_file(str(folder / "model.safetensors"))
    w, b = weights["v_head.summary.weight"].float(), weights["v_head.summary.bias"].float()
    ids = tok.encode(tok.bos_token + problem + "\n")
    flags = [0] * len(ids)
    step_token_id = tok.encode(step_token)[-1]
    for piece in response.split(step_token):
        piece_ids = (tok.encode(piece) if piece != "" else []) + [step_token_id]
        ids += piece_ids
        flags += [0] * (len(piece_ids) - 1) + [1]
    with torch.no_grad():
        hidden = lm(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0].float()
    values = torch.sigmoid(hidden @ w.T + b)[:, 0]
    return ids, [values[i].item() for i, f in enumerate(flags) if f]


@pytest.fixture(scope="module")
def skywork(replica_root):
    return {("1.5B", "bin"): _built(replica_root, "skywork_15b_bin", lambda f: rep.skywork_prm(f, "1.5B", "bin")),
            ("7B", "bin"): _built(replica_root, "skywork_7b_bin", lambda f: rep.skywork_prm(f, "7B", "bin")),
            ("1.5B", "safetensors"): _built(replica_root, "skywork_15b_st",
                                            lambda f: rep.skywork_prm(f, "1.5B", "safetensors"))}


@pytest.mark.parametrize("size,fmt", [("1.5B", "bin"), ("7B", "bin"), ("1.5B", "safetensors")])
@pytest.mark.parametrize("step_token", ["\n", "\n\n"], ids=["card-newline", "paper-double-newline"])
@pytest.mark.slow
def test_skywork_prm_scores_as_its_reference(skywork, size, fmt, step_token):
    folder = skywork[(size, fmt)]
    assert detect_reward_type(str(folder)) == "value_head"
    ref_ids, ref_values = skywork_reference(folder, QUESTION, RESPONSE, step_token)
    rm = load_reward_model(str(folder), step_token=step_token)
    assert isinstance(rm, ValueHeadPRM)
    ids, rewards = library_scores(rm)
    assert ids == ref_ids
    # Each RSD step's reward is the value at the step token that closes it.
    closing, seen = [], 0
    for step in STEPS:
        pieces = step.split(step_token)
        seen += len(pieces) - 1 if step.endswith(step_token) else len(pieces)
        closing.append(ref_values[seen - 1])
    assert rewards == pytest.approx(closing, abs=1e-5)


def test_skywork_default_step_token_is_the_cards(skywork):
    rm = load_reward_model(str(skywork[("1.5B", "bin")]))
    assert rm.format.step_token == "\n"


# ------------------------------------------------------------------------------ Math-Shepherd


def math_shepherd_reference(folder: Path, question: str, steps: list[str]):
    """The model card: input = f"{question} {output}" with "Step k: ... ки" lines, ONE tokenization;
    softmax over encode("+ -")[1:] at every encode("ки")[-1], index 0."""
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    candidate_tokens = tok.encode("+ -")[1:]
    step_tag_id = tok.encode("ки")[-1]
    output = "\n".join(f"Step {i + 1}: {s} ки" for i, s in enumerate(steps))
    ids = tok.encode(f"{question} {output}")
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0][:, candidate_tokens].float()
    scores = logits.softmax(dim=-1)[:, 0]
    return ids, [scores[i].item() for i in positions(ids, step_tag_id)], candidate_tokens, step_tag_id


@pytest.fixture(scope="module")
def shepherd(replica_root):
    return _built(replica_root, "math_shepherd", rep.math_shepherd_prm)


def test_math_shepherd_scores_as_its_model_card(shepherd):
    import sentencepiece

    assert not (shepherd / "tokenizer.json").exists()  # as on the hub: tokenizer.model only
    assert detect_reward_type(str(shepherd)) == "math_shepherd"
    bodies = [s.strip() for s in STEPS]
    ref_ids, ref_rewards, candidates, tag = math_shepherd_reference(shepherd, QUESTION, bodies)
    assert candidates == [648, 387] and tag == 12902  # the ids the model card names
    sp = sentencepiece.SentencePieceProcessor(model_file=str(shepherd / "tokenizer.model"))
    output = "\n".join(f"Step {i + 1}: {s} ки" for i, s in enumerate(bodies))
    assert ref_ids == [1] + sp.encode(f"{QUESTION} {output}")  # the real SentencePiece model's own ids
    rm = load_reward_model(str(shepherd))
    assert isinstance(rm, MathShepherdPRM)
    ids, rewards = library_scores(rm)
    assert ids == ref_ids  # one step at a time, yet the whole string's ids: no stray "▁" (28705)
    assert rewards == pytest.approx(ref_rewards, abs=1e-5)


def test_math_shepherd_without_sentencepiece_names_the_missing_package(shepherd, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sentencepiece" else real(name, *a))
    with pytest.raises(ModelLoadError, match=r"sentencepiece.*rsd\[sentencepiece\]"):
        load_reward_model(str(shepherd))


# ------------------------------------------------------------------------------ RLHFlow


def rlhflow_reference(folder: Path, question: str, steps: list[str]):
    """RLHFlow's procedure: user turns (question + " " + step 1, then each step), each answered "+";
    P("+") over {"+", "-"} at position -3 (where the newest reply "+" is predicted)."""
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    plus, minus = tok.encode("+", add_special_tokens=False)[-1], tok.encode("-", add_special_tokens=False)[-1]
    conversation, out = [], []
    for k, step in enumerate(steps):
        conversation.append({"role": "user", "content": question + " " + step if k == 0 else step})
        conversation.append({"role": "assistant", "content": "+"})
        enc = tok.apply_chat_template(conversation, tokenize=True)
        ids = list(enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "keys") else enc)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -3, [plus, minus]].float()
        out.append((ids, logits.softmax(-1)[0].item()))
    return out, plus


@pytest.fixture(scope="module")
def rlhflow(replica_root):
    return _built(replica_root, "rlhflow", rep.rlhflow_prm)


def test_rlhflow_prm_scores_as_its_reference(rlhflow):
    bodies = [s.strip() for s in STEPS]
    ref, plus = rlhflow_reference(rlhflow, QUESTION, bodies)
    rm = load_reward_model(str(rlhflow), reward_type="chat_prm")
    assert isinstance(rm, ChatPRM)
    rm.start(0, CONV)
    for step, (ref_ids, ref_reward) in zip(STEPS, ref):
        reward = rm.score([0], [step])[0]
        assert ref_ids[-2] == plus  # the reply the reference reads the probability of
        assert rm.cached.states[0].ids == ref_ids[:-2]  # our prefix ends where the reply is predicted
        assert reward == pytest.approx(ref_reward, abs=1e-5)


# ------------------------------------------------------------------------------ the toy step-tag PRM


def test_toy_step_tag_prm_scores_as_the_step_tag_procedure(tiny_paths):
    folder = Path(tiny_paths["prm"])  # a Qwen2ForTokenClassification on the toy tokenizer, no system turn
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForTokenClassification.from_pretrained(folder, dtype=torch.float32).eval()
    steps = RESPONSE.split("\n\n")
    messages = [{"role": "user", "content": QUESTION},
                {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"}]
    ids = tok.encode(tok.apply_chat_template(messages, tokenize=False))
    at = positions(ids, tok.convert_tokens_to_ids("<extra_0>"))
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)
    rm = load_reward_model(str(folder))
    got_ids, rewards = library_scores(rm)
    assert got_ids == ids[: at[-1] + 1]
    assert rewards == pytest.approx([probs[i, 1].item() for i in at], abs=1e-5)


# ------------------------------------------------------------------------------ no random heads


HEAD_WEIGHTS = {
    "qwen_prm": ("score.2.bias", None),
    "skywork_15b_bin": ("v_head.summary.weight", None),
    "math_shepherd": ("lm_head.weight", None),
    "rlhflow": ("lm_head.weight", "chat_prm"),
}


def _without_weight(src: Path, dst: Path, weight: str) -> None:
    """A copy of the checkpoint with one weight taken out of its files and index."""
    import json

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    removed = False
    for f in list(dst.glob("*.safetensors")) + list(dst.glob("*.bin")):
        state = torch.load(f, weights_only=True) if f.suffix == ".bin" else load_file(str(f))
        if weight in state:
            del state[weight]
            torch.save(state, f) if f.suffix == ".bin" else save_file(state, str(f), metadata={"format": "pt"})
            removed = True
    for index in dst.glob("*.index.json"):
        data = json.loads(index.read_text())
        data["weight_map"].pop(weight, None)
        index.write_text(json.dumps(data))
    assert removed, weight


@pytest.mark.parametrize("name", sorted(HEAD_WEIGHTS))
@pytest.mark.slow
def test_a_replica_missing_a_head_weight_is_refused(replica_root, qwen_prm, skywork, shepherd, rlhflow, tmp_path, name):
    weight, reward_type = HEAD_WEIGHTS[name]
    _without_weight(replica_root / name, tmp_path / name, weight)
    with pytest.raises(ModelLoadError, match=weight.replace(".", r"\.")):
        load_reward_model(str(tmp_path / name), reward_type=reward_type)


def test_the_toy_step_tag_prm_missing_its_head_is_refused(tiny_paths, tmp_path):
    _without_weight(Path(tiny_paths["prm"]), tmp_path / "prm", "score.weight")
    with pytest.raises(ModelLoadError, match=r"score\.weight"):
        load_reward_model(str(tmp_path / "prm"))


def test_replica_tokenizers_are_the_real_vocabularies(qwen_prm, shepherd):
    """The replicas' ids mean what they mean on the hub: Qwen's BPE ranks (checked against tiktoken on the
    same ranks) and Mistral's SentencePiece model."""
    import sentencepiece
    import tiktoken
    from replicas.tokenizers import QWEN2_PATTERN, qwen_ranks

    enc = tiktoken.Encoding("qwen2", pat_str=QWEN2_PATTERN, mergeable_ranks=qwen_ranks(), special_tokens={})
    qwen = AutoTokenizer.from_pretrained(qwen_prm)
    for text in STEPS + [QUESTION, "  spaced\n\n\nout ", "こんにちは 你好 ки"]:
        assert qwen(text, add_special_tokens=False).input_ids == enc.encode_ordinary(text)
    assert qwen.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<extra_0>"]) == [151644, 151645, 151665]
    sp = sentencepiece.SentencePieceProcessor(model_file=str(shepherd / "tokenizer.model"))
    mistral = AutoTokenizer.from_pretrained(shepherd)
    for text in STEPS + [QUESTION]:
        assert mistral(text).input_ids == [1] + sp.encode(text)


def test_reward_options_reach_the_family_from_the_decoder_the_cli_and_chat_rsd(skywork, tiny_paths):
    from rsd_core import RewardGuidedDecoder, cli
    from rsd_integrations.langchain import ChatRSD

    prm = str(skywork[("1.5B", "bin")])
    a = cli.build_parser().parse_args(["generate", "x", "--draft", tiny_paths["draft"], "--target",
                                       tiny_paths["target"], "--reward", prm, "--reward-option", 'step_token="\\n\\n"',
                                       "--reward-option", "system_prompt=plain text"])
    opts, cfg = cli._options(a)
    assert opts.reward_options == {"step_token": "\n\n", "system_prompt": "plain text"}
    opts.reward_options.pop("system_prompt")  # not a Skywork option: named as missing below
    for dec in (RewardGuidedDecoder.from_pretrained(tiny_paths["draft"], tiny_paths["target"], prm,
                                                    reward_options={"step_token": "\n\n"}),
                cli._decoder(opts, cfg),
                ChatRSD(model=tiny_paths["target"], draft_model=tiny_paths["draft"], reward_model=prm,
                        reward_options={"step_token": "\n\n"}).get_decoder()):
        assert dec.reward.format.step_token == "\n\n"
    with pytest.raises(ValueError, match="'value_head' reward family .* has no option 'system_prompt'"):
        RewardGuidedDecoder.from_pretrained(tiny_paths["draft"], tiny_paths["target"], prm,
                                            reward_options={"system_prompt": "x"})
