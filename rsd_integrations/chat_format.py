"""Messages and tools in, tool calls out: shared by the LangChain and LlamaIndex classes.

Both frameworks' messages become plain chat dicts (``role``, ``content``, ``tool_calls``,
``tool_call_id``), which the model's own chat template renders; tools become OpenAI-style function
schemas, passed to the template as ``tools``. Tool calls come back in the format Qwen2.5, Hermes and
the toy models write: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.

Example:
    >>> text, calls, bad = parse_tool_calls('Let me look.<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>')
    >>> text, calls[0].name, calls[0].arguments, bad
    ('Let me look.', 'f', {'x': 1}, [])
    >>> forced_reply(["f"], "f")
    '<tool_call>{"name": "f", "arguments": '
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from rsd_core.messages import validate_messages  # noqa: F401  (re-exported for the integrations)

TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(TOOL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CLOSE) + r"|$)", re.S)


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class InvalidToolCall:
    raw: str
    error: str
    name: str | None = None
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")


def tool_names(tools: list[dict[str, Any]] | None) -> list[str]:
    """Names of OpenAI-style tool schemas (``{"type": "function", "function": {"name": ...}}`` or bare)."""
    return [t.get("function", t).get("name", "") for t in tools or []]


def forced_reply(names: list[str], tool_choice: Any, opening: str = TOOL_OPEN) -> str:
    """The start a reply is forced to have so that ``tool_choice`` holds: ``""`` (the model decides),
    an opened call (``"any"``/``"required"``/``True``: some tool; one tool only: that one), or an
    opened call to the named tool (``"name"``, ``{"type": "function", "function": {"name": ...}}``).

    The model then writes the arguments itself. ``opening`` is the call tag as the model's chat
    template writes it (Qwen2.5's puts a newline after it). ``"none"`` is handled by not offering the
    tools at all (``offered_tools``).
    """
    if tool_choice in (None, False, "auto", "none"):
        return ""
    if tool_choice in (True, "any", "required"):
        if not names:
            raise ValueError(f"tool_choice={tool_choice!r} needs at least one tool")
        if len(names) > 1:
            return opening + '{"name": "'
        name = names[0]
    elif isinstance(tool_choice, str):
        name = tool_choice
    elif isinstance(tool_choice, dict) and isinstance(tool_choice.get("function", tool_choice).get("name"), str):
        name = tool_choice.get("function", tool_choice)["name"]
    else:
        raise ValueError(f"tool_choice must be 'auto', 'none', 'any', 'required', a tool name or "
                         f"{{'type': 'function', 'function': {{'name': ...}}}}, got {tool_choice!r}")
    if name not in names:
        raise ValueError(f"tool_choice names {name!r}, which is not among the tools: {names}")
    return opening + json.dumps({"name": name}, ensure_ascii=False)[:-1] + ', "arguments": '


def call_opening(tokenizer: Any) -> str:
    """The tool-call tag as this model's chat template writes it (Qwen2.5 and Hermes: a newline after it)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    newline_after = TOOL_OPEN + "\\n" in template or TOOL_OPEN + "\n" in template  # escaped or literal
    return TOOL_OPEN + "\n" if newline_after else TOOL_OPEN


def parse_tool_calls(text: str, tools: list[dict[str, Any]] | None = None
                     ) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
    """Split model output into (content, tool calls, invalid calls). Never raises on bad output.

    With the offered ``tools``, an argument that is ``null`` and not required is dropped, so the tool
    sees its default (a forced call writes every parameter, ``null`` for one it leaves unset).
    """
    calls: list[ToolCall] = []
    bad: list[InvalidToolCall] = []
    for m in _BLOCK.finditer(text):
        raw = m.group(1).strip()
        complete = m.group(0).endswith(TOOL_CLOSE)
        try:
            obj = json.loads(raw)
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
        missing = _missing_required(args, obj["name"], tools)
        if missing:
            bad.append(InvalidToolCall(raw, f"missing required argument(s): {', '.join(missing)}", obj["name"]))
            continue
        calls.append(ToolCall(obj["name"], _without_unset(args, obj["name"], tools)))
    content = _BLOCK.sub("", text).strip() if (calls or bad) else text
    return content, calls, bad


def check_tool_names(tools: list[dict[str, Any]]) -> None:
    """Tool names the call format can carry: non-empty text without the call tags or control characters."""
    for t in tools:
        name = t.get("function", t).get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a tool needs a non-empty name, got {name!r}")
        if TOOL_OPEN in name or TOOL_CLOSE in name or any(ord(c) < 32 for c in name):
            raise ValueError(f"tool name {name!r} cannot be carried by the call format: it holds "
                             f"{TOOL_OPEN!r}/{TOOL_CLOSE!r} or a control character; rename the tool")


def _missing_required(args: dict[str, Any], name: str, tools: list[dict[str, Any]] | None) -> list[str]:
    for t in tools or []:
        fn = t.get("function", t)
        if fn.get("name") == name:
            required = (fn.get("parameters") or {}).get("required") or []
            return [k for k in required if k not in args]
    return []


def _without_unset(args: dict[str, Any], name: str, tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    for t in tools or []:
        fn = t.get("function", t)
        if fn.get("name") == name:
            required = set((fn.get("parameters") or {}).get("required") or [])
            return {k: v for k, v in args.items() if v is not None or k in required}
    return args


class ToolCallStreamFilter:
    """Streams content while holding back anything that may be a ``<tool_call>`` block.

    ``feed(text)`` returns the text that is safe to show now; ``finish()`` returns what is left.
    """

    def __init__(self) -> None:
        self._buf = ""
        self._in_call = False

    def feed(self, text: str) -> str:
        self._buf += text
        out = []
        while self._buf:
            if self._in_call:
                end = self._buf.find(TOOL_CLOSE)
                if end == -1:
                    break
                self._buf = self._buf[end + len(TOOL_CLOSE):]
                self._in_call = False
                continue
            start = self._buf.find(TOOL_OPEN)
            if start != -1:
                out.append(self._buf[:start])
                self._buf = self._buf[start + len(TOOL_OPEN):]
                self._in_call = True
                continue
            keep = _partial_suffix(self._buf, TOOL_OPEN)  # a tag may be split across chunks
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
