"""The tool-call format object: its forced start and grammars agree byte for byte, it is read from the
chat template, and a second format is one new object that the whole path (prompt, grammar, decoding,
parsing, streaming) then follows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from rsd_core import RewardGuidedDecoder, RSDConfig
from rsd_core.backends.hf import HFGenerator
from rsd_core.backends.rendering import render_prompt
from rsd_core.tool_format import FORMATS, HERMES, ToolCallFormat, check_tool_binding, tool_format_for
from rsd_core.toy import toy_model_paths

SQUARE = {"type": "function", "function": {"name": "square", "description": "x squared", "parameters": {
    "type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}}
NOTE = {"type": "function", "function": {"name": "note", "description": "", "parameters": {
    "type": "object", "properties": {"text": {"type": "string"}, "tag": {"enum": ["a", "b"]}}, "required": ["text"]}}}
FUNCTION_CALL = ToolCallFormat("function-call", "<function_call>", "</function_call>")


def written(fmt: ToolCallFormat, name: str, args: dict) -> str:
    """A call as the format's template writes it, from the tags alone (not from the format's own code)."""
    body = json.dumps({"name": name, "arguments": args}, ensure_ascii=False)
    nl = "\n" if fmt.newline else ""
    return fmt.open + nl + body + nl + fmt.close


@pytest.mark.parametrize("fmt", [HERMES, HERMES.for_template("<tool_call>\n"), FUNCTION_CALL])
@pytest.mark.parametrize("choice, called", [("square", ["square"]), ("any", ["square", "note"]),
                                            ({"type": "function", "function": {"name": "note"}}, ["note"])])
def test_the_forced_start_is_where_the_grammar_begins_and_every_fitting_call_completes_it(fmt, choice, called):
    plan = fmt.plan([SQUARE, NOTE], choice)
    assert plan.tools == [SQUARE, NOTE] and plan.grammar is not None
    calls = {"square": written(fmt, "square", {"x": -12}), "note": written(fmt, "note", {"text": "hi", "tag": "b"})}
    for name, text in calls.items():
        if name in called:
            assert text.startswith(plan.reply_prefix), (plan.reply_prefix, text)
            cur = plan.grammar.after(text)
            assert cur is not None and cur.complete, text
            assert fmt.parse(text, [SQUARE, NOTE])[1][0].name == name
        else:
            assert plan.grammar.after(text) is None  # a call to a tool the choice excludes


def test_auto_offers_the_tools_and_holds_calls_in_text_and_none_offers_nothing():
    plan = FUNCTION_CALL.plan([SQUARE], "auto")
    assert plan.reply_prefix == "" and plan.tools == [SQUARE]
    assert plan.grammar.after("Sure. " + written(FUNCTION_CALL, "square", {"x": 3}) + " Done.").accepting
    assert plan.grammar.after("Sure. <function_call>{\"name\": \"cube\"") is None
    assert plan.grammar.after("<tool_call>{not a call in this format}").accepting  # another format's tag is text
    assert FUNCTION_CALL.plan([SQUARE], "none") == FUNCTION_CALL.plan(None) and FUNCTION_CALL.plan(None).tools is None


@pytest.mark.parametrize("choice, match", [("cube", "not among the tools"), (3, "tool_choice must be"),
                                           ({"type": "function"}, "tool_choice must be")])
def test_a_bad_tool_choice_names_the_problem(choice, match):
    with pytest.raises(ValueError, match=match):
        HERMES.plan([SQUARE], choice)
    with pytest.raises(ValueError, match=match):
        check_tool_binding([SQUARE], choice)
    with pytest.raises(ValueError, match="no tools are bound"):
        HERMES.plan(None, "any")


def test_names_that_would_break_the_tags_are_refused_by_that_format():
    bad = {"name": "a</function_call>", "parameters": {"type": "object", "properties": {}}}
    with pytest.raises(ValueError, match="cannot be carried"):
        FUNCTION_CALL.plan([bad], "auto")
    assert HERMES.plan([bad], "auto").tools == [bad]  # Hermes' tags do not appear in it


@dataclass
class _Tok:
    chat_template: Any


@pytest.mark.parametrize("template, newline", [
    ("{{- '<tool_call>\\n' + tool_call | tojson + '\\n</tool_call>' }}", True),  # escaped, as in Qwen2.5's
    ("{% for c in calls %}<tool_call>\n{{ c }}\n</tool_call>{% endfor %}", True),
    ("{{ '<tool_call>' + c + '</tool_call>' }}", False),
    ("{{ messages }}", False),  # names no format: Hermes, the one templates that drop tools are told
])
def test_the_format_and_its_newline_are_read_from_the_template(template, newline):
    for tok in (_Tok(template), _Tok({"default": "{{ m }}", "tool_use": template})):
        fmt = tool_format_for(tok)
        assert (fmt.open, fmt.newline) == (HERMES.open, newline)
        assert fmt.plan([SQUARE], "square").reply_prefix.startswith("<tool_call>" + ("\n" if newline else "") + "{")


@pytest.fixture
def second_format(monkeypatch):
    """FUNCTION_CALL registered as a format that templates can write."""
    monkeypatch.setattr("rsd_core.tool_format.FORMATS", (FUNCTION_CALL, *FORMATS))
    return FUNCTION_CALL


@pytest.fixture(scope="module")
def toy():
    p = toy_model_paths()
    return RewardGuidedDecoder.from_pretrained(p["draft"], p["target"], p["prm"])


def test_a_registered_format_is_picked_from_the_template_and_tells_template_less_tools_its_tags(second_format, toy):
    tok = toy.target.tokenizer
    assert tool_format_for(_Tok("{{ '<function_call>\\n' + c + '\\n</function_call>' }}")) == \
        ToolCallFormat("function-call", "<function_call>", "</function_call>", newline=True)
    assert tool_format_for(tok).open == HERMES.open  # the toy's template writes Hermes calls
    # A template that drops tools is told the tools and this format's tags in the system turn.
    gen = HFGenerator.from_pretrained(toy_model_paths()["target"])
    gen.tokenizer.chat_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}" \
                                  "{% if false %}<function_call>{% endif %}"
    ids = render_prompt(gen.tokenizer, [{"role": "user", "content": "hi"}], [SQUARE], "toy", 4096)
    text = gen.tokenizer.decode(ids)
    assert '<function_call>{"name": <tool name>' in text and '"name": "square"' in text and "<tool_call>" not in text


@pytest.mark.parametrize("choice", ["square", "any"])
def test_the_decoder_writes_a_forced_call_in_a_second_format_that_parses_with_fitting_arguments(toy, choice):
    """The toy was trained on Hermes tags; under the second format's plan it still writes a call in that
    format (the grammar writes the tags and keys), which the same object parses into a schema-valid call."""
    tools = [SQUARE, NOTE]
    plan = FUNCTION_CALL.plan(tools, choice)
    prompts = [[{"role": "user", "content": "What is 12 squared? Use the tool."}],
               [{"role": "user", "content": "Write a note saying hello."}]]
    results = toy.generate(prompts, config=RSDConfig(max_new_tokens=120, threshold=0.7), tools=plan.tools,
                           reply_prefix=plan.reply_prefix, grammar=plan.grammar)
    for r in results:
        assert r.text.startswith(plan.reply_prefix)
        if r.finish_reason == "max_new_tokens":  # a long string value may run out of tokens: still a prefix
            assert plan.grammar.after(r.text) is not None
            continue
        content, calls, bad = FUNCTION_CALL.parse(r.text, tools)
        assert content == "" and not bad and len(calls) == 1, r.text
        call = calls[0]
        assert call.name in (["square"] if choice == "square" else ["square", "note"])
        if call.name == "square":
            assert isinstance(call.arguments["x"], int)
        else:
            assert isinstance(call.arguments["text"], str) and call.arguments.get("tag") in (None, "a", "b")
        streamed = FUNCTION_CALL.stream_filter()
        assert streamed.feed(r.text) + streamed.finish() == ""  # the call never reaches streamed content


class ListCalls(ToolCallFormat):
    """A format whose body is a one-element JSON list (``[TOOL_CALLS][{...}]``-like): a subclass, three overrides."""

    def call_head(self, name: str | None) -> str:
        return "[" + super().call_head(name)

    def _call_nodes(self, tool, before, after):
        from rsd_core.constraints import Exact

        return super()._call_nodes(tool, before, (Exact(b"]"), *after))

    def _decode_body(self, raw: str) -> Any:
        body = json.loads(raw)
        return body[0] if isinstance(body, list) and len(body) == 1 else body


def test_another_call_body_is_a_subclass_and_its_start_grammar_and_parser_agree():
    fmt = ListCalls("list", "[CALLS]", "[/CALLS]")
    plan = fmt.plan([SQUARE], "square")
    text = '[CALLS][{"name": "square", "arguments": {"x": 4}}][/CALLS]'
    assert text.startswith(plan.reply_prefix) and plan.grammar.after(text).complete
    assert [(c.name, c.arguments) for c in fmt.parse(text, [SQUARE])[1]] == [("square", {"x": 4})]
    assert fmt.plan([SQUARE]).grammar.after("ok " + text).accepting
    assert HERMES.plan([SQUARE], "square").grammar.after(text) is None
