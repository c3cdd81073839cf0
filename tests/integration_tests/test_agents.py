"""Agents end to end on the embedded toy trio: tools really called, results read back, step events seen.

The toy target was taught tool use on random tools (``rsd_core/toy/tool_use.py``); the tools here
(``square``, ``magic_function``, ``get_weather``, ``Joke``) are names it never saw in training.
Left to itself it misspells an unseen name, but with tools offered every call it starts is held to
the tools' grammar (``rsd_core/constraints.py``): the name is one of the tools and the arguments fit
their schemas. So the agents here run as users write them, with no forced first turn. The toy draft
was never taught tools: its attempts are rejected by the PRM and the target writes the call. The
tests check the mechanism (the tool ran with arguments that fit, its result went back to the model,
the model's reply reached the caller), not the exact text the toy writes.
"""

from __future__ import annotations

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from rsd_integrations.langchain import ChatRSD

from .test_langchain_events import Recorder

QUESTION = "What is the value of square(12)? Use the tool."


def make_square(calls: list):
    @tool
    def square(x: int) -> int:
        """Square a number."""
        calls.append(x)
        return x * x

    return square


@tool
def magic_function(input: int) -> int:
    """Apply a magic function to an input."""
    return input + 2


@tool
def get_weather(location: str) -> str:
    """Get the weather at a location."""
    return "It's sunny."


class Joke(BaseModel):
    """Joke to tell user."""

    setup: str = Field(description="question to set up a joke")
    punchline: str = Field(description="answer to resolve the joke")


@pytest.fixture(scope="module")
def llm():
    return ChatRSD(max_tokens=200)


class Prompts(BaseCallbackHandler):
    """The messages each chat-model call was given."""

    def __init__(self):
        self.inputs: list = []

    def on_chat_model_start(self, serialized, messages, **kw):
        self.inputs.append(messages[0])


# ---------------------------------------------------------------- LangChain


def test_langchain_agent_calls_the_tool_and_answers_with_its_result(llm):
    from langchain.agents import create_agent

    calls: list = []
    rec, prompts = Recorder(), Prompts()
    agent = create_agent(llm, tools=[make_square(calls)])
    state = agent.invoke({"messages": [("user", QUESTION)]}, config={"callbacks": [rec, prompts]})
    # The tool ran once, with arguments that fit its schema, and its result went back to the model.
    assert len(calls) == 1 and isinstance(calls[0], int)
    kinds = [type(m).__name__ for m in state["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert state["messages"][1].tool_calls[0]["args"] == {"x": calls[0]}
    assert state["messages"][2].content == str(calls[0] ** 2)
    assert len(prompts.inputs) == 2 and prompts.inputs[1][-1].content == str(calls[0] ** 2)
    # The answer reached the caller: the second turn's reply, no call in it, written by the steps reported.
    answer = state["messages"][-1]
    assert answer.content and not answer.tool_calls
    assert "".join(s["text"] for s in rec.steps if s["accepted"]).endswith(answer.content)
    assert len(rec.targets) == sum(s["source"] == "target" for s in rec.steps)
    assert all(s["reward"] >= llm.threshold for s in rec.steps if s["source"] == "draft" and s["accepted"])


async def test_langgraph_agent_streams_step_events_and_tool_runs(llm):
    from langchain.agents import create_agent

    calls: list = []
    agent = create_agent(llm, tools=[make_square(calls)])
    names = []
    async for ev in agent.astream_events({"messages": [("user", QUESTION)]}, version="v2"):
        names.append(ev["name"] if ev["event"] == "on_custom_event" else ev["event"])
    assert len(calls) == 1 and isinstance(calls[0], int)
    assert "rsd_step" in names and "on_tool_end" in names
    # The first model turn's step events come before the tool runs, the answer's after it.
    tool_at = names.index("on_tool_end")
    assert "rsd_step" in names[:tool_at] and "rsd_step" in names[tool_at:]


@pytest.mark.parametrize("choice", ["magic_function", "get_weather", {"type": "function", "function": {"name": "get_weather"}}])
def test_tool_choice_by_name_forces_that_tool(llm, choice):
    msg = llm.bind_tools([magic_function, get_weather], tool_choice=choice).invoke("Hello!")
    name = choice if isinstance(choice, str) else choice["function"]["name"]
    assert [c["name"] for c in msg.tool_calls] == [name] and not msg.invalid_tool_calls
    assert msg.content == ""


@pytest.mark.parametrize("choice", ["any", "required", True])
def test_tool_choice_any_forces_a_call(llm, choice):
    # With one tool bound the call is to that tool; with several, the model writes the name (the toy may
    # misspell one it never saw, and the caller gets the call as written).
    one = llm.bind_tools([get_weather], tool_choice=choice).invoke("Hello!")
    assert [c["name"] for c in one.tool_calls] == ["get_weather"] and list(one.tool_calls[0]["args"]) == ["location"]
    two = llm.bind_tools([magic_function, get_weather], tool_choice=choice).invoke("Hello!")
    assert len(two.tool_calls) == 1 and not two.invalid_tool_calls and two.content == ""


def test_tool_choice_none_offers_no_tools(llm):
    q = "What is the value of magic_function(3)? Use the tool."
    plain = llm.invoke(q)
    none = llm.bind_tools([magic_function], tool_choice="none").invoke(q)
    auto = llm.bind_tools([magic_function]).invoke(q)
    assert none.content == plain.content and not none.tool_calls  # tools not offered, output not parsed
    assert auto.tool_calls or auto.invalid_tool_calls  # offered, the model reaches for a tool by itself
    forced = llm.bind_tools([magic_function], tool_choice="any").invoke(q)
    assert forced.tool_calls[0]["name"] == "magic_function" and isinstance(forced.tool_calls[0]["args"]["input"], int)


def test_tool_choice_errors_name_the_problem(llm):
    with pytest.raises(ValueError, match="not among the tools"):
        llm.bind_tools([magic_function], tool_choice="nope")
    with pytest.raises(ValueError, match="no tools are bound"):
        llm.invoke("Hello!", tool_choice="any")


def test_forced_call_streams_as_tool_call_chunks_only(llm):
    chunks = list(llm.bind_tools([magic_function], tool_choice="any").stream("What is the value of magic_function(3)?"))
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert full.content == "" and all("<tool_call>" not in c.content for c in chunks)
    assert full.tool_calls[0]["name"] == "magic_function" and isinstance(full.tool_calls[0]["args"]["input"], int)


@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
def test_structured_output_fills_the_schema(llm, method):
    out = llm.with_structured_output(Joke, method=method).invoke("Tell me a joke about dogs.")
    assert isinstance(out, Joke) and out.setup and out.punchline
    raw = llm.with_structured_output(Joke.model_json_schema() | {"title": "Joke", "description": "Joke to tell user."},
                                     include_raw=True).invoke("Tell me a joke about dogs.")
    assert isinstance(raw["raw"], AIMessage) and raw["parsing_error"] is None and set(raw["parsed"]) >= {"setup"}


def test_tool_result_turn_is_answered(llm):
    first = llm.bind_tools([get_weather], tool_choice="get_weather").invoke("What is the weather in Oslo?")
    call = first.tool_calls[0]
    assert call["name"] == "get_weather" and list(call["args"]) == ["location"] and call["args"]["location"]
    prompts = Prompts()
    answer = llm.bind_tools([get_weather]).invoke(
        ["What is the weather in Oslo?", first, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])],
        config={"callbacks": [prompts]})
    assert prompts.inputs[0][-1].content == "It's sunny." and prompts.inputs[0][-1].tool_call_id == call["id"]
    assert answer.content or answer.tool_calls or answer.invalid_tool_calls
    assert answer.response_metadata["finish_reason"] in ("eos", "max_new_tokens", "stop")


# ---------------------------------------------------------------- LlamaIndex


def li_square(calls: list):
    from llama_index.core.tools import FunctionTool

    def square(x: int) -> int:
        """Square a number."""
        calls.append(x)
        return x * x

    return FunctionTool.from_defaults(square)


class _Events:
    def __init__(self):
        from llama_index.core.instrumentation import get_dispatcher
        from llama_index.core.instrumentation.event_handlers import BaseEventHandler

        sink = self.events = []

        class Handler(BaseEventHandler):
            @classmethod
            def class_name(cls) -> str:
                return "AgentEvents"

            def handle(self, event, **kwargs) -> None:
                sink.append(event)

        self.handler = Handler()
        self.dispatcher = get_dispatcher()
        self.dispatcher.add_event_handler(self.handler)

    def close(self):
        self.dispatcher.event_handlers.remove(self.handler)


@pytest.fixture
def li_events():
    ev = _Events()
    yield ev.events
    ev.close()


async def test_llama_index_function_agent_calls_the_tool(li_events):
    from llama_index.core.agent.workflow import FunctionAgent

    from rsd_integrations.llama_index import RSDLLM, RSDStepEvent, RSDTargetInvocationEvent

    calls: list = []
    agent = FunctionAgent(tools=[li_square(calls)], llm=RSDLLM(max_tokens=200))
    response = await agent.run(QUESTION)
    assert len(calls) == 1 and isinstance(calls[0], int)
    # The tool's result went back to the model, and the model's last reply reached the caller.
    starts = [e for e in li_events if type(e).__name__ == "LLMChatStartEvent"]
    assert len(starts) == 2 and str(calls[0] ** 2) in str(starts[1].messages[-1].content)
    ends = [e for e in li_events if type(e).__name__ == "LLMChatEndEvent"]
    assert str(response) and str(response) == ends[-1].response.message.content
    steps = [e for e in li_events if isinstance(e, RSDStepEvent)]
    assert steps and any(isinstance(e, RSDTargetInvocationEvent) for e in li_events)
    assert all(e.span_id for e in steps)
    assert any(e.source == "target" and e.accepted and '"x": 12' in e.text for e in steps)


async def test_llama_index_react_agent_reasons_in_the_react_format_and_answers(li_events):
    """ReActAgent prompts through its 1,900-token header and parses Thought / Answer from the text.

    The toy target answers a word problem in that format without a tool; the test checks the format's
    round trip (the model's ``Answer:`` is what the caller gets), not the toy's arithmetic. (The toy draft, trained on short
    word problems only, writes noise behind the long header; the PRM rejects it and the target writes each
    step.) Choosing a tool in ReAct's ``Action:`` line means spelling an unseen name, which the toy cannot;
    FunctionAgent above is the tool path on the toy.
    """
    from llama_index.core.agent.workflow import AgentOutput, ReActAgent

    from rsd_core.toy.task import make_problems
    from rsd_integrations.llama_index import RSDLLM, RSDStepEvent

    calls: list = []
    agent = ReActAgent(tools=[li_square(calls)], llm=RSDLLM(max_tokens=200))
    for p in make_problems(2, 777):  # a seed training never uses
        li_events.clear()
        handler = agent.run(p.question, max_iterations=3)
        outputs = [ev async for ev in handler.stream_events() if isinstance(ev, AgentOutput)]
        response = await handler
        assert outputs and outputs[-1].response.content == str(response)
        # The agent parsed the model's own ReAct text: its answer is what the last reply says after "Answer:".
        written = "".join(e.text for e in li_events if isinstance(e, RSDStepEvent) and e.accepted)
        assert written.startswith("Thought:") and "Answer:" in written
        assert str(response) == written.split("Answer:", 1)[1].strip()
        steps = [e for e in li_events if isinstance(e, RSDStepEvent) and e.accepted]
        proposed = [e for e in li_events if isinstance(e, RSDStepEvent) and e.source == "draft"]
        assert proposed and all(e.span_id for e in steps)  # RSD ran inside the agent: the draft proposed, the PRM judged
    assert calls == []


def test_llama_index_tool_required_forces_a_call_and_predict_and_call_runs_it():
    from rsd_integrations.llama_index import RSDLLM

    llm = RSDLLM(max_tokens=200)
    calls: list = []
    tool_ = li_square(calls)
    resp = llm.chat_with_tools([tool_], user_msg="Hello!", tool_required=True)
    selections = llm.get_tool_calls_from_response(resp)
    assert [s.tool_name for s in selections] == ["square"] and set(selections[0].tool_kwargs) == {"x"}
    out = llm.predict_and_call([tool_], user_msg=QUESTION, tool_required=True)
    assert calls == [12] and str(out) == "144"
