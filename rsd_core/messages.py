"""Chat messages as plain dicts (``role``, ``content``, ``tool_calls``, ``tool_call_id``), checked up front.

Example:
    >>> validate_messages([{"role": "user", "content": "hi"}])
    [{'role': 'user', 'content': 'hi'}]
"""

from __future__ import annotations

from typing import Any

from rsd_core.errors import InvalidPromptError

ROLES = ("system", "user", "assistant", "tool")


def check_text(text: str, where: str) -> str:
    """Text a tokenizer can read: valid Unicode (no lone surrogates such as ``"\\ud800"``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidPromptError(f"{where} is not valid Unicode text: {e.reason} at character {e.start} "
                                 f"({text[e.start:e.end]!r}); remove or replace it") from None
    return text


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Check a chat before any model work: roles known, content a string, tool results answer a call."""
    if not isinstance(messages, list) or not messages:
        raise InvalidPromptError(f"a chat must be a non-empty list of messages, got {messages!r:.80}")
    open_calls: set[str] = set()
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidPromptError(f"message {i} must be a dict with 'role' and 'content', got {m!r:.80}")
        role = m.get("role")
        if role not in ROLES:
            raise InvalidPromptError(f"message {i} has unknown role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(m.get("content") or "", str):
            raise InvalidPromptError(f"message {i} ({role}) has content of type {type(m['content']).__name__}, "
                                     "expected text")
        check_text(m.get("content") or "", f"message {i} ({role})")
        for call in m.get("tool_calls") or []:
            open_calls.add(call.get("id", ""))
        if role == "tool":
            cid = m.get("tool_call_id")
            if not cid or cid not in open_calls:
                raise InvalidPromptError(
                    f"message {i} is a tool result for call id {cid!r}, but no earlier assistant message made that call"
                )
    if not any(m["role"] in ("user", "tool") for m in messages):
        raise InvalidPromptError("the conversation has no user message")
    if not any((m.get("content") or "").strip() or m.get("tool_calls") for m in messages):
        raise InvalidPromptError("the prompt is empty: no message has any text")
    return messages
