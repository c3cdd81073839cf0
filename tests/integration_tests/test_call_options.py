"""Options passed per call are validated as the constructors validate them, named as the caller named them."""

from __future__ import annotations

import pytest

from rsd_integrations.langchain import ChatRSD
from rsd_integrations.llama_index import RSDLLM

Q = "Ann has 12 apples. She buys 5 more. She gives away 3. How many apples does Ann have now?"
BAD = [({"max_tokens": 0}, "max_tokens=0"), ({"max_tokens": -1}, "max_tokens=-1"),
       ({"threshold": float("nan")}, "threshold=nan"), ({"threshold": 1.5}, "threshold=1.5"),
       ({"temperature": -1.0}, "temperature=-1.0"), ({"seed": 2**100}, "seed=")]


@pytest.fixture(scope="module")
def chat():
    return ChatRSD(max_tokens=8)


@pytest.fixture(scope="module")
def llm():
    return RSDLLM(max_tokens=8)


@pytest.mark.parametrize("kw,named", BAD, ids=[n for _, n in BAD])
def test_chat_rsd_refuses_a_bad_per_call_option_and_stays_usable(chat, kw, named):
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        chat.invoke(Q, **kw)
    out = chat.invoke(Q, max_tokens=4)
    assert out.usage_metadata["output_tokens"] <= 4


@pytest.mark.parametrize("kw,named", BAD, ids=[n for _, n in BAD])
def test_rsd_llm_refuses_a_bad_per_call_option_and_stays_usable(llm, kw, named):
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        llm.complete(Q, **kw)
    assert llm.complete(Q, max_tokens=4).text is not None


def test_a_per_call_max_tokens_is_the_budget(chat):
    assert chat.invoke(Q, max_tokens=3).usage_metadata["output_tokens"] <= 3


def test_timeout_stops_waiting_while_a_slow_reward_still_runs(tiny_paths):
    import threading

    from rsd_core import RewardGuidedDecoder

    release, finished = threading.Event(), threading.Event()

    def slow_reward(q, prev, step):
        release.wait(30)
        finished.set()
        return 1.0

    dec = RewardGuidedDecoder.from_pretrained(tiny_paths["draft"], tiny_paths["target"], slow_reward)
    llm = ChatRSD(decoder=dec, timeout=0.5, max_tokens=8)
    with pytest.raises(TimeoutError, match=r"timeout=0\.5"):
        llm.invoke(Q)
    assert not finished.is_set()  # the caller was answered while the reward was still working
    release.set()
    out = ChatRSD(decoder=dec, max_tokens=4).invoke(Q)  # the decoder serves the next call
    assert out.usage_metadata["output_tokens"] >= 1


def test_token_counts_use_the_target_tokenizer(chat):
    tok = chat.get_decoder().target.tokenizer
    assert chat.get_token_ids(Q) == tok(Q, add_special_tokens=False).input_ids
    assert chat.get_num_tokens(Q) == len(tok(Q, add_special_tokens=False).input_ids) > 0


@pytest.mark.parametrize("prompt", ["", "   "])
def test_an_empty_prompt_is_refused_the_same_way_everywhere(chat, llm, prompt):
    from rsd_core.errors import InvalidPromptError

    with pytest.raises(InvalidPromptError, match="empty"):
        chat.invoke(prompt)
    with pytest.raises(InvalidPromptError, match="empty"):
        llm.complete(prompt)
    with pytest.raises(InvalidPromptError, match="empty"):
        chat.get_decoder().generate([[{"role": "user", "content": prompt}]])


# ------------------------------------------------------------------ one options model, the same everywhere


def test_both_clients_take_the_same_options():
    from rsd_core.options import RSDOptions

    shared = set(RSDOptions.model_fields)
    assert shared <= set(ChatRSD.model_fields) and shared <= set(RSDLLM.model_fields)
    for cls in (ChatRSD, RSDLLM):
        with pytest.raises(ValueError, match=r"weighting='greedy'"):
            cls(weighting="greedy")
        with pytest.raises(ValueError, match=r"timeout=0"):
            cls(timeout=0)


def test_both_clients_refuse_an_unknown_call_option_by_name(chat, llm):
    with pytest.raises(TypeError, match=r"ChatRSD calls do not take \['temprature'\]"):
        chat.invoke(Q, temprature=0.5)
    with pytest.raises(TypeError, match=r"RSDLLM calls do not take \['temprature'\]"):
        llm.complete(Q, temprature=0.5)


def _flaky_decoder(tiny_paths, fails: int):
    """A decoder whose reward runs out of GPU memory on its first ``fails`` calls."""
    import torch

    from rsd_core import RewardGuidedDecoder

    left = [fails]

    def reward(q, prev, step):
        if left[0] > 0:
            left[0] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return 1.0

    return RewardGuidedDecoder.from_pretrained(tiny_paths["draft"], tiny_paths["target"], reward), left


@pytest.mark.parametrize("client", ["ChatRSD.invoke", "ChatRSD.ainvoke", "RSDLLM.chat", "RSDLLM.achat"])
def test_out_of_memory_is_retried_in_every_client_and_mode(tiny_paths, client):
    import asyncio

    from llama_index.core.llms import ChatMessage

    from rsd_core.errors import ModelRunError

    def call(max_retries: int):
        dec, left = _flaky_decoder(tiny_paths, fails=1)
        if client.startswith("ChatRSD"):
            c = ChatRSD(decoder=dec, max_tokens=6, max_retries=max_retries)
            out = c.invoke(Q) if client.endswith(".invoke") else asyncio.run(c.ainvoke(Q))
            return out.content, left
        c = RSDLLM(decoder=dec, max_tokens=6, max_retries=max_retries)
        msgs = [ChatMessage(role="user", content=Q)]
        out = c.chat(msgs) if client.endswith(".chat") else asyncio.run(c.achat(msgs))
        return out.message.content, left

    with pytest.raises(ModelRunError, match="out of memory"):
        call(max_retries=0)
    text, left = call(max_retries=1)
    assert left == [0] and isinstance(text, str)  # the first attempt failed, the retry answered


def test_rsd_llm_timeout_stops_waiting(tiny_paths):
    import threading

    from rsd_core import RewardGuidedDecoder

    release = threading.Event()
    dec = RewardGuidedDecoder.from_pretrained(tiny_paths["draft"], tiny_paths["target"],
                                              lambda q, prev, step: release.wait(30) and 1.0)
    with pytest.raises(TimeoutError, match=r"timeout=0\.5"):
        RSDLLM(decoder=dec, timeout=0.5, max_tokens=8).complete(Q)
    release.set()


@pytest.mark.parametrize("cls", [ChatRSD, RSDLLM])
def test_models_that_do_not_go_together_are_named_in_the_clients_terms(cls):
    """A target without its draft, or a draft and target whose threshold lets rewards decide with no reward
    model: refused when the client is made (and for a call's own threshold, when the call is made), naming
    the client's fields, not the decoder's or the command's."""
    from rsd_core.options import OptionError
    from rsd_core.toy import toy_model_paths

    p = toy_model_paths()
    name = cls.__name__
    with pytest.raises(OptionError, match=rf"^{name}: draft_model=: name both draft_model= and model="):
        cls(model=p["target"])
    with pytest.raises(OptionError, match=rf"^{name}: reward_model=: threshold 0.7 needs a reward model.*"
                                          r"reward_type=.*threshold= 0 \(draft only\)"):
        cls(model=p["target"], draft_model=p["draft"])
    target_only = cls(model=p["target"], draft_model=p["draft"], threshold=1.0, max_tokens=8)
    call = target_only.invoke if cls is ChatRSD else target_only.complete
    with pytest.raises(OptionError, match=r"^reward_model=: threshold 0.5 needs a reward model"):
        call(Q, threshold=0.5)
    assert call(Q) is not None  # still usable
    target_only.close()
