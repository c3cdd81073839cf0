"""ChatRSD's own promises: step events in every mode, batching, metadata that merges, clear errors."""

from __future__ import annotations

import asyncio
import json

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda

from rsd_core.backends.rendering import render_prompt
from rsd_core.errors import InvalidPromptError
from rsd_integrations._shared import get_scheduler
from rsd_integrations.langchain import ChatRSD, RSDCallbackHandler

# A held-out toy problem the trio solves with a few target rewrites (greedy, deterministic).
QUESTION = "Ann has 88 rocks. She uses 49. She buys 6 more. She uses 40. She gets 5 more. How many rocks does Ann have now?"


class Recorder(RSDCallbackHandler):
    def __init__(self):
        self.steps, self.targets = [], []

    def on_rsd_step(self, step, **kw):
        self.steps.append(step)

    def on_rsd_target_invocation(self, event, **kw):
        self.targets.append(event)


@pytest.fixture(scope="module")
def llm():
    return ChatRSD(max_tokens=80)


def check_steps(rec: Recorder, text: str):
    assert rec.steps, "no rsd_step events"
    assert "".join(s["text"] for s in rec.steps if s["accepted"]) == text
    assert len(rec.targets) == sum(1 for s in rec.steps if s["source"] == "target")


def test_invoke_reports_every_step(llm):
    rec = Recorder()
    msg = llm.invoke(QUESTION, config={"callbacks": [rec]})
    check_steps(rec, msg.content)
    dec = llm.get_decoder()  # the answer is the decoder's own, passed through unchanged
    assert msg.content == dec.generate([[{"role": "user", "content": QUESTION}]], config=llm.to_config(dec.config))[0].text
    meta = msg.response_metadata
    assert meta["model_name"] == "rsd-toy-target" and meta["rsd"]["draft_steps"] >= 1
    assert msg.usage_metadata["output_tokens"] > 0 and msg.usage_metadata["input_tokens"] > 0


def test_stream_reports_steps_and_chunks_add_up(llm):
    rec = Recorder()
    chunks = list(llm.stream(QUESTION, config={"callbacks": [rec]}))
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert len([c for c in chunks if c.content]) > 3  # token pieces, not one blob
    check_steps(rec, full.content)
    assert full.content == llm.invoke(QUESTION).content
    records = full.response_metadata["rsd_steps"]
    assert [r["text"] for r in records] == [s["text"] for s in rec.steps if s["accepted"]]
    assert full.usage_metadata["output_tokens"] > 0


def test_events_inside_an_lcel_chain_and_astream_events(llm):
    chain = ChatPromptTemplate.from_messages([("user", "{q}")]) | llm | StrOutputParser()
    rec = Recorder()
    text = chain.invoke({"q": QUESTION}, config={"callbacks": [rec]})
    check_steps(rec, text)

    async def collect():
        return [e async for e in chain.astream_events({"q": QUESTION}, version="v2")]

    events = asyncio.run(collect())
    names = [e["name"] for e in events if e["event"] == "on_custom_event"]
    assert "rsd_step" in names
    model_runs = {e["run_id"] for e in events if e["event"] == "on_chat_model_start"}
    assert {e["run_id"] for e in events if e["event"] == "on_custom_event"} <= model_runs


def test_events_in_a_graph_like_node_that_streams(llm):
    """A node that calls ``stream`` inside a runnable (as LangGraph nodes do) still reports steps."""
    rec = Recorder()

    def node(q):
        return "".join(c.content for c in llm.stream(q))

    text = RunnableLambda(node).invoke(QUESTION, config={"callbacks": [rec]})
    check_steps(rec, text)


def test_async_invoke_and_stream_report_steps(llm):
    async def run():
        rec1, rec2 = Recorder(), Recorder()
        msg = await llm.ainvoke(QUESTION, config={"callbacks": [rec1]})
        parts = [c.content async for c in llm.astream(QUESTION, config={"callbacks": [rec2]})]
        return msg, rec1, "".join(parts), rec2

    msg, rec1, streamed, rec2 = asyncio.run(run())
    check_steps(rec1, msg.content)
    check_steps(rec2, streamed)
    assert streamed == msg.content


def test_batch_runs_as_one_batch_and_matches_single_calls(llm, monkeypatch):
    questions = [QUESTION, "Ben has 40 pens. He loses 7. How many pens does Ben have now?", "Cal has 9 cards."]
    sched = get_scheduler(llm.get_decoder())
    sizes = []
    original = sched.decoder.generate

    def spy(prompts, **kw):
        sizes.append(len(prompts))
        return original(prompts, **kw)

    monkeypatch.setattr(sched.decoder, "generate", spy)
    batched = [m.content for m in llm.batch(questions)]
    assert max(sizes) > 1  # coalesced, not one call per thread
    monkeypatch.undo()
    assert batched == [llm.invoke(q).content for q in questions]


def test_concurrent_ainvoke_do_not_block_the_loop_and_match(llm):
    async def run():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        t = asyncio.create_task(ticker())
        outs = await asyncio.gather(*[llm.ainvoke(QUESTION) for _ in range(4)])
        t.cancel()
        return outs, ticks

    outs, ticks = asyncio.run(run())
    assert ticks > 5  # the loop kept running while the models worked
    assert len({o.content for o in outs}) == 1


def test_stop_is_honoured_exactly(llm):
    full = llm.invoke(QUESTION).content
    stop = full.split("\n\n")[1][:4]
    assert llm.invoke(QUESTION, stop=[stop]).content == full[: full.find(stop)]


def test_usage_metadata_has_model_details(llm):
    u = llm.invoke(QUESTION).usage_metadata
    assert u["total_tokens"] == u["input_tokens"] + u["output_tokens"]
    assert set(u["output_token_details"]) == {"draft_decode", "target_decode"}
    assert u["input_token_details"]["reward_prefill"] > 0


@pytest.mark.parametrize("messages, match", [
    ([], "empty|non-empty"),
    ([SystemMessage("only a system message")], "no user message"),
    ([HumanMessage("hi"), AIMessage(""), ToolMessage("42", tool_call_id="call_x")], "no earlier assistant"),
    ([HumanMessage(content=[{"type": "image_url", "image_url": {"url": "http://x"}}])], "image_url"),
])
def test_bad_messages_get_clear_errors(llm, messages, match):
    with pytest.raises(InvalidPromptError, match=match):
        llm.invoke(messages)


def test_tool_messages_round_trip_through_the_template(llm, monkeypatch):
    sched = get_scheduler(llm.get_decoder())
    sent: list = []
    submit = sched.submit
    monkeypatch.setattr(sched, "submit", lambda req: (sent.append(req), submit(req))[1])
    ai = AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "call_1"}])
    msg = llm.bind_tools([{"type": "function", "function": {"name": "add", "parameters": {}}}]).invoke(
        [HumanMessage("add 1 and 2"), ai, ToolMessage("3", tool_call_id="call_1")])
    # The call and its result reached the decoder as chat turns, and the model read them through its template.
    req = sent[-1]
    assert [m["role"] for m in req.prompt] == ["user", "assistant", "tool"]
    assert req.prompt[1]["tool_calls"][0]["function"] == {"name": "add", "arguments": {"a": 1, "b": 2}}
    assert req.prompt[2] == {"role": "tool", "content": "3", "tool_call_id": "call_1"}
    tok = llm.get_decoder().target.tokenizer
    rendered = tok.decode(render_prompt(tok, req.prompt, req.tools, "toy", 4096))
    assert '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>' in rendered
    assert rendered.endswith("<|im_start|>tool\n3<|im_end|>\n<|im_start|>assistant\n")
    assert msg.response_metadata["finish_reason"] in ("eos", "max_new_tokens", "stop")


def _tool(name: str, **params: str) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {
        "type": "object", "properties": {k: {"type": v} for k, v in params.items()}, "required": list(params)}}}


def test_unicode_tool_arguments_arrive_unescaped_in_invoke_and_stream(llm):
    """Fixed model output with CJK arguments: the parsed args and the streamed chunks carry the characters."""
    from rsd_core.events import GenerationStats, RSDResult, StepEvent
    from rsd_integrations.langchain import _ChunkStreamer

    call = '<tool_call>{"name": "unicode_customer", "arguments": {"customer_name": "你好啊集团", "description": "こんにちは"}}</tool_call>'
    tok = llm.get_decoder().target.tokenizer
    ids = tok(call, add_special_tokens=False).input_ids
    step = StepEvent(0, 0, call, len(ids), "target", 0.9, None, True, token_ids=ids)
    res = RSDResult(0, call, [step], GenerationStats(), "eos", 5, len(ids))
    tools = [_tool("unicode_customer", customer_name="string", description="string")]
    msg = llm._message(res, tools=tools)
    assert msg.tool_calls[0]["args"] == {"customer_name": "你好啊集团", "description": "こんにちは"}
    streamer = _ChunkStreamer(llm, tools=tools)
    chunks = [c.message for e in (step, res) for c in streamer.chunks(e)]
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert "你好啊集团" in full.tool_call_chunks[0]["args"] and "\\u" not in full.tool_call_chunks[0]["args"]
    assert full.tool_calls[0]["args"]["customer_name"] == "你好啊集团"


def test_tool_calls_parsed_from_output_and_streamed_as_chunks(llm):
    """The parsing path on fixed model output (text before a call, then the call, split across steps)."""
    from rsd_core.events import GenerationStats, RSDResult, StepEvent
    from rsd_integrations.langchain import _ChunkStreamer

    call = '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
    tok = llm.get_decoder().target.tokenizer
    texts = ["Let me add.\n\n", call]
    steps = [StepEvent(0, i, t, len(tok(t).input_ids), "target", 0.9, None, True,
                       token_ids=tok(t, add_special_tokens=False).input_ids) for i, t in enumerate(texts)]
    res = RSDResult(0, "".join(texts), steps, GenerationStats(), "eos", 5, 20)
    msg = llm._message(res, tools=[_tool("add", a="integer", b="integer")])
    assert msg.tool_calls[0]["name"] == "add" and msg.tool_calls[0]["args"] == {"a": 1, "b": 2}
    assert msg.content == "Let me add."
    streamer = _ChunkStreamer(llm, tools=[_tool("add", a="integer", b="integer")])
    chunks = [c.message for e in [*steps, res] for c in streamer.chunks(e)]
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert "tool_call" not in full.content  # the raw block is never shown as text
    assert full.tool_calls and full.tool_calls[0]["name"] == "add"
    assert json.loads(full.tool_call_chunks[0]["args"]) == {"a": 1, "b": 2}
