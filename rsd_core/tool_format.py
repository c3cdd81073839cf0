"""How a model writes tool calls, in one object: tags, forced start, grammar, parser, stream filter.

A ``ToolCallFormat`` is everything that depends on the way one model family writes a call:

- ``plan(tools, tool_choice)``: the reply start that makes ``tool_choice`` hold and the grammar
  that holds every call to the offered tools' schemas (a forced call, or free text with calls);
- ``parse(text, tools)``: model output split into content, calls and invalid calls;
- ``stream_filter()``: streamed content with the calls held back;
- ``with_tools_in_system_turn(messages, tools)``: the tools, and how to call them, stated in the
  system turn for chat templates that drop ``tools``;
- ``check_names(tools)``: tool names the format can carry.

The grammar and the forced start are built from the same tags and call head here, so they agree
byte for byte. ``HERMES`` is the format Qwen2.5, Hermes and the toy models write
(``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``); ``tool_format_for(tokenizer)`` picks
a model's format from its chat template, with the newline its template puts inside the tags.

A new format with other tags is one new instance in ``FORMATS``; one with another call body
(Mistral's ``[TOOL_CALLS][{...}]`` list) is a subclass that overrides ``call_head``,
``_call_nodes`` and ``_decode_body``.

Example:
    >>> plan = HERMES.plan([{"name": "f", "parameters": {"type": "object", "properties": {}}}], "f")
    >>> plan.reply_prefix
    '<tool_call>{"name": "f", "arguments": '
    >>> plan.grammar.after(plan.reply_prefix + "{}}</tool_call>").complete
    True
    >>> text, calls, bad = HERMES.parse('Let me look.<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>')
    >>> text, calls[0].name, calls[0].arguments, bad
    ('Let me look.', 'f', {'x': 1}, [])
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from rsd_core.constraints import Choice, Concat, Exact, Grammar, Node, TextWithCalls, UnsupportedSchema, object_node

__all__ = ["FORMATS", "HERMES", "InvalidToolCall", "check_tool_binding", "forced_tools", "ToolCall", "ToolCallFormat", "ToolCallStreamFilter",
           "ToolPlan", "tool_format_for", "tool_names"]

Tools = list[dict[str, Any]]


@dataclass
class ToolCall:
    """One parsed call: the tool's name and its arguments (an OpenAI-style call in ``to_dict``)."""

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class InvalidToolCall:
    """A call the model started that does not parse or does not fit its tool, with why."""

    raw: str
    error: str
    name: str | None = None
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")


@dataclass(frozen=True)
class ToolPlan:
    """What one request's ``tool_choice`` asks of the decoder.

    ``tools`` are those offered to the template (None: none), ``reply_prefix`` the start the reply is
    forced to have (``""``: the model decides), ``grammar`` what the whole reply must follow (None
    where a tool's schema cannot be expressed: calls are then left unconstrained).
    """

    tools: Tools | None = None
    reply_prefix: str = ""
    grammar: Grammar | None = None


def tool_names(tools: Tools | None) -> list[str]:
    """Names of OpenAI-style tool schemas (``{"type": "function", "function": {"name": ...}}`` or bare)."""
    return [_function(t).get("name", "") for t in tools or []]


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    fn = tool.get("function", tool)
    return fn if isinstance(fn, dict) else {}


def forced_tools(names: list[str], tool_choice: Any) -> list[str] | None:
    """The tools ``tool_choice`` forces a call to (None: the model decides whether to call).

    ``"auto"``/``"none"``/None/False: None; ``"any"``/``"required"``/True: every tool;
    a name or ``{"type": "function", "function": {"name": ...}}``: that tool. Bad choices raise
    ``ValueError`` naming what was given.
    """
    if tool_choice in (None, False, "auto", "none"):
        return None
    if tool_choice in (True, "any", "required"):
        if not names:
            raise ValueError(f"tool_choice={tool_choice!r} needs at least one tool")
        return list(names)
    if isinstance(tool_choice, str):
        name = tool_choice
    elif isinstance(tool_choice, dict) and isinstance(_function(tool_choice).get("name"), str):
        name = _function(tool_choice)["name"]
    else:
        raise ValueError(f"tool_choice must be 'auto', 'none', 'any', 'required', a tool name or "
                         f"{{'type': 'function', 'function': {{'name': ...}}}}, got {tool_choice!r}")
    if name not in names:
        raise ValueError(f"tool_choice names {name!r}, which is not among the tools: {names}")
    return [name]


def check_tool_binding(tools: Tools, tool_choice: Any = None) -> None:
    """What can be checked when tools are bound, before the target (and so its format) is known: the
    names no known format's tags would break, and a ``tool_choice`` that names one of them."""
    for fmt in FORMATS:
        fmt.check_names(tools)
    forced_tools(tool_names(tools), tool_choice)


@dataclass(frozen=True)
class ToolCallFormat:
    """Calls written as ``open`` + ``{"name": ..., "arguments": {...}}`` + ``close``.

    ``newline``: the chat template puts a newline inside the tags (Qwen2.5's and Hermes' do); a
    forced call is written that way, and a call the model starts may have it or not.
    """

    name: str
    open: str
    close: str
    newline: bool = False

    # ----------------------------------------------------------------------------- the tags

    @property
    def opening(self) -> str:
        """The opening tag as the model's template writes it."""
        return self.open + "\n" if self.newline else self.open

    @property
    def closing(self) -> str:
        return "\n" + self.close if self.newline else self.close

    def written_by(self, template: str) -> bool:
        """Whether a chat template writes calls in this format."""
        return self.open in template

    def for_template(self, template: str) -> ToolCallFormat:
        """This format with the newline the template puts after the opening tag (escaped or literal)."""
        return replace(self, newline=self.open + "\\n" in template or self.open + "\n" in template)

    def check_names(self, tools: Tools) -> None:
        """Tool names the format can carry: non-empty text without the call tags or control characters."""
        for t in tools:
            name = _function(t).get("name")
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"a tool needs a non-empty name, got {name!r}")
            if self.open in name or self.close in name or any(ord(c) < 32 for c in name):
                raise ValueError(f"tool name {name!r} cannot be carried by the call format: it holds "
                                 f"{self.open!r}/{self.close!r} or a control character; rename the tool")

    # ----------------------------------------------------------------------------- tool_choice

    def call_head(self, name: str | None) -> str:
        """The start of a call's body, up to its arguments (``name=None``: up to the name's first character)."""
        if name is None:
            return '{"name": "'
        return '{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments": '

    def forced_prefix(self, names: list[str]) -> str:
        """The reply start that forces a call to one of ``names`` (the model writes the rest)."""
        return self.opening + self.call_head(names[0] if len(names) == 1 else None)

    def plan(self, tools: Tools | None, tool_choice: Any = None) -> ToolPlan:
        """The tools to offer, and the forced reply start and grammar that make ``tool_choice`` hold.

        ``"none"`` offers no tools. ``"any"``/``"required"``/a name force the reply to be one call:
        the call's tags, keys and brackets are written for the model, which writes the name and each
        argument's value, held to the tool's schema. ``"auto"`` lets the model write text and holds
        any call it starts to the same grammar, so no call can fail to parse or name a tool that is
        not offered.
        """
        if not tools or tool_choice == "none":
            if tool_choice not in (None, "auto", "none", False):
                raise ValueError(f"tool_choice={tool_choice!r} but no tools are bound")
            return ToolPlan()
        self.check_names(tools)
        forced = forced_tools(tool_names(tools), tool_choice)
        try:
            grammar = self.call_grammar([t for t in tools if _function(t).get("name") in forced]) \
                if forced is not None else self.text_grammar(tools)
        except UnsupportedSchema:
            grammar = None
        return ToolPlan(tools, self.forced_prefix(forced) if forced is not None else "", grammar)

    # ----------------------------------------------------------------------------- grammars

    def _call_nodes(self, tool: dict[str, Any], before: tuple[Node, ...], after: tuple[Node, ...]) -> Concat:
        """One call's body to ``tool``, its arguments held to the tool's parameters."""
        fn = _function(tool)
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        return Concat((*before, _lit(self.call_head(fn["name"])), object_node(params), _lit("}"), *after))

    def call_grammar(self, tools: Tools) -> Grammar:
        """The whole reply is one call, written as the template writes it, to one of ``tools``.

        Raises ``UnsupportedSchema`` when a tool's parameters cannot be expressed.
        """
        if not tools:
            raise ValueError("no tools to call")
        return Grammar(_one_of([self._call_nodes(t, (_lit(self.opening),), (_lit(self.closing),)) for t in tools]))

    def text_grammar(self, tools: Tools) -> Grammar:
        """Free text in which each call the model starts is a call to one of ``tools`` that fits its
        parameters (``tool_choice="auto"``). The newline inside the tags is optional.

        Raises ``UnsupportedSchema`` when a tool's parameters cannot be expressed.
        """
        if not tools:
            raise ValueError("no tools to call")
        newline = Choice((Exact(b""), Exact(b"\n")))
        calls = [self._call_nodes(t, (newline,), (newline, _lit(self.close))) for t in tools]
        return Grammar(TextWithCalls(self.open.encode(), _one_of(calls)))

    # ----------------------------------------------------------------------------- parsing

    @cached_property
    def _block(self) -> re.Pattern[str]:
        return re.compile(re.escape(self.open) + r"(.*?)(?:" + re.escape(self.close) + r"|$)", re.S)

    def _decode_body(self, raw: str) -> Any:
        """The JSON in one call block (raises ``json.JSONDecodeError``)."""
        return json.loads(raw)

    def parse(self, text: str, tools: Tools | None = None) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
        """Split model output into (content, tool calls, invalid calls). Never raises on bad output.

        With the offered ``tools``, a call missing a required argument is invalid, and an argument
        that is ``null`` and not required is dropped, so the tool sees its default (a forced call
        writes every parameter, ``null`` for one it leaves unset).
        """
        calls: list[ToolCall] = []
        bad: list[InvalidToolCall] = []
        for m in self._block.finditer(text):
            raw = m.group(1).strip()
            complete = m.group(0).endswith(self.close)
            try:
                obj = self._decode_body(raw)
            except json.JSONDecodeError as e:
                bad.append(InvalidToolCall(raw, f"not valid JSON ({e.msg})" + ("" if complete else "; truncated")))
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
                bad.append(InvalidToolCall(raw, 'expected {"name": str, "arguments": object}'))
                continue
            args = obj.get("arguments", obj.get("parameters", {}))
            if isinstance(args, str):  # some models double-encode the arguments
                try:
                    args = json.loads(args)
                except json.JSONDecodeError:
                    bad.append(InvalidToolCall(raw, "arguments are a string that is not JSON", obj["name"]))
                    continue
            if not isinstance(args, dict):
                bad.append(InvalidToolCall(raw, f"arguments must be an object, got {type(args).__name__}", obj["name"]))
                continue
            schema = _parameters(obj["name"], tools)
            required = (schema or {}).get("required") or []
            missing = [k for k in required if k not in args]
            if missing:
                bad.append(InvalidToolCall(raw, f"missing required argument(s): {', '.join(missing)}", obj["name"]))
                continue
            if schema is not None:
                args = {k: v for k, v in args.items() if v is not None or k in required}
            calls.append(ToolCall(obj["name"], args))
        content = self._block.sub("", text).strip() if (calls or bad) else text
        return content, calls, bad

    def stream_filter(self) -> ToolCallStreamFilter:
        """A filter that streams content and holds back this format's calls."""
        return ToolCallStreamFilter(self.open, self.close)

    # ----------------------------------------------------------------------------- templates that drop tools

    def instructions(self, tools: Tools) -> str:
        """The tools, and how to call them in this format, as text for the system turn."""
        lines = ["You can call these tools. To call one, reply with",
                 self.open + '{"name": <tool name>, "arguments": <arguments as a JSON object>}' + self.close, "Tools:"]
        return "\n".join(lines + [json.dumps(_function(t)) for t in tools])

    def with_tools_in_system_turn(self, messages: list[dict[str, Any]], tools: Tools) -> list[dict[str, Any]]:
        """The chat with ``instructions(tools)`` added to its system turn (one is added if there is none)."""
        text = self.instructions(tools)
        if messages and messages[0].get("role") == "system":
            return [{**messages[0], "content": f"{messages[0].get('content') or ''}\n\n{text}"}, *messages[1:]]
        return [{"role": "system", "content": text}, *messages]


def _lit(text: str) -> Exact:
    return Exact(text.encode())


def _one_of(nodes: list[Concat]) -> Node:
    return nodes[0] if len(nodes) == 1 else Choice(tuple(nodes))


def _parameters(name: str, tools: Tools | None) -> dict[str, Any] | None:
    """The parameters schema of the offered tool called ``name`` (None: not among ``tools``)."""
    for t in tools or []:
        fn = _function(t)
        if fn.get("name") == name:
            return fn.get("parameters") or {}
    return None


HERMES = ToolCallFormat("hermes", "<tool_call>", "</tool_call>")
"""Qwen2.5's, Hermes' and the toy models' calls: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``."""

FORMATS: tuple[ToolCallFormat, ...] = (HERMES,)
"""The formats ``tool_format_for`` recognises in a chat template, first match wins."""


def tool_format_for(tokenizer: Any) -> ToolCallFormat:
    """The call format a tokenizer's chat template writes (``HERMES`` when it names none: the format
    given to templates that drop tools), with the template's own newline inside the tags."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):  # named templates ({"default": ..., "tool_use": ...})
        template = "\n".join(str(v) for v in template.values())
    fmt = next((f for f in FORMATS if f.written_by(template)), HERMES)
    return fmt.for_template(template)


class ToolCallStreamFilter:
    """Streams content while holding back anything that may be a call block between ``open`` and ``close``.

    ``feed(text)`` returns the text that is safe to show now; ``finish()`` returns what is left.
    Built by ``ToolCallFormat.stream_filter()``.
    """

    def __init__(self, open_tag: str, close_tag: str) -> None:
        self._open, self._close = open_tag, close_tag
        self._buf = ""
        self._in_call = False

    def feed(self, text: str) -> str:
        self._buf += text
        out = []
        while self._buf:
            if self._in_call:
                end = self._buf.find(self._close)
                if end == -1:
                    break
                self._buf = self._buf[end + len(self._close):]
                self._in_call = False
                continue
            start = self._buf.find(self._open)
            if start != -1:
                out.append(self._buf[:start])
                self._buf = self._buf[start + len(self._open):]
                self._in_call = True
                continue
            keep = _partial_suffix(self._buf, self._open)  # a tag may be split across chunks
            out.append(self._buf[: len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep:]
            break
        return "".join(out)

    def finish(self) -> str:
        rest = "" if self._in_call else self._buf
        self._buf = ""
        return rest


def _partial_suffix(text: str, tag: str) -> int:
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0
