"""Tool names and schemas at the edges: non-ASCII names work, names that break the format are refused,
a call missing a required argument is an invalid call, not a valid one with empty arguments."""

from __future__ import annotations

import pytest

from rsd_core.tool_format import HERMES
from rsd_integrations.langchain import ChatRSD


def _tool(name, params=None, required=None):
    return {"type": "function", "function": {"name": name, "description": "a tool",
                                             "parameters": {"type": "object", "properties": params or {},
                                                            "required": required or []}}}


@pytest.fixture(scope="module")
def llm():
    return ChatRSD(max_tokens=48)


def test_a_non_ascii_tool_name_is_forced_and_parsed(llm):
    tool = _tool("天气_查询", {"city": {"type": "string"}}, ["city"])
    msg = llm.bind_tools([tool], tool_choice="天气_查询").invoke("What is the weather in Paris?")
    assert [c["name"] for c in msg.tool_calls] == ["天气_查询"]
    assert isinstance(msg.tool_calls[0]["args"]["city"], str)
    assert HERMES.plan([tool], "天气_查询").reply_prefix.endswith('{"name": "天气_查询", "arguments": ')


@pytest.mark.parametrize("name", ["</tool_call>", "a<tool_call>b", "tab\there", "", "  "])
def test_names_the_call_format_cannot_carry_are_refused_at_bind_time(llm, name):
    with pytest.raises(ValueError, match="tool"):
        llm.bind_tools([_tool(name)])


def test_a_call_missing_a_required_argument_is_invalid():
    tools = [_tool("tree", {"v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#"}}}, ["v"])]
    content, calls, bad = HERMES.parse('<tool_call>' + '{"name": "tree", "arguments": {}}</tool_call>', tools)
    assert calls == [] and len(bad) == 1 and "v" in bad[0].error
    _, calls, bad = HERMES.parse('<tool_call>' + '{"name": "tree", "arguments": {"v": 1}}</tool_call>', tools)
    assert [c.arguments for c in calls] == [{"v": 1}] and not bad
