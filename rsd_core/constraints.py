"""Replies that must follow a grammar, token by token: tool calls whose arguments fit the schema.

A ``Grammar`` is a small nondeterministic automaton over bytes (so it fits every tokenizer) built
from JSON-schema pieces: literals (keys, quotes, brackets, the call tags) are the only bytes
allowed where they stand, and values are the model's own, held to their type (a string's content,
an integer's digits, one of an enum's options). A tool-call format builds its grammars from these
nodes (``rsd_core.tool_format``: a forced call, or free text in which every call the model starts
must be valid). While a sequence is constrained, each new token is the model's own pick when the
automaton accepts it, else its most likely allowed token (or one sampled among the most likely
allowed ones); once the grammar is complete, only end-of-sequence is.

Example:
    >>> g = Grammar(Concat((Exact(b'{"x": '), schema_node({"type": "integer"}), Exact(b"}"))))
    >>> c = g.cursor().feed(b'{"x": 1')
    >>> c is not None and not c.accepting
    True
    >>> c.feed(b'2}').accepting, c.feed(b'"') is None
    (True, True)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from rsd_core.sampling import Draws, filtered_probs

QUOTE, BACKSLASH = 0x22, 0x5C
MAX_STRING_BYTES = 512
MAX_DIGITS = 24
MAX_ITEMS = 64


class UnsupportedSchema(ValueError):
    """A schema this grammar cannot express (then the call is left unconstrained)."""


# --------------------------------------------------------------------------- grammar nodes
# Each node is immutable; a state is a hashable value; ``step`` gives the states after one byte.


class Node:
    def first(self) -> list[Any]:
        raise NotImplementedError

    def step(self, state: Any, b: int) -> list[Any]:
        raise NotImplementedError

    def done(self, state: Any) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class Exact(Node):
    text: bytes

    def first(self) -> list[Any]:
        return [0]

    def step(self, state: int, b: int) -> list[Any]:
        return [state + 1] if state < len(self.text) and self.text[state] == b else []

    def done(self, state: int) -> bool:
        return state == len(self.text)


@dataclass(frozen=True)
class String(Node):
    """A JSON string of well-formed UTF-8: no raw control characters, JSON's escapes, at most
    ``MAX_STRING_BYTES``. A state is (phase, bytes so far, bytes the character or escape still needs)."""

    def first(self) -> list[Any]:
        return [("open", 0, 0)]

    def step(self, state: tuple[str, int, int], b: int) -> list[Any]:
        phase, n, cont = state
        if phase == "open":
            return [("in", 0, 0)] if b == QUOTE else []
        if phase == "esc":
            return [("in", n + 1, 0)] if b in b'"\\/bfnrt' else [("hex", n + 1, 4)] if b == ord("u") else []
        if phase == "hex":  # \uXXXX
            ok = b in b"0123456789abcdefABCDEF"
            return [("in" if cont == 1 else "hex", n + 1, cont - 1 if cont > 1 else 0)] if ok else []
        if phase != "in":
            return []
        if cont:  # inside a multi-byte character
            return [("in", n + 1, cont - 1)] if 0x80 <= b <= 0xBF else []
        if b == QUOTE:
            return [("closed", n, 0)]
        need = 1 if 0xC2 <= b <= 0xDF else 2 if 0xE0 <= b <= 0xEF else 3 if 0xF0 <= b <= 0xF4 else 0
        if b < 0x20 or 0x80 <= b <= 0xC1 or b > 0xF4 or n + 1 + need > MAX_STRING_BYTES:
            return []
        return [("esc", n + 1, 0)] if b == BACKSLASH else [("in", n + 1, need)]

    def done(self, state: tuple[str, int, int]) -> bool:
        return state[0] == "closed"


@dataclass(frozen=True)
class Number(Node):
    """A JSON number; ``integer`` allows no fraction or exponent."""

    integer: bool = False

    def first(self) -> list[Any]:
        return [("start", 0)]

    def step(self, state: tuple[str, int], b: int) -> list[Any]:
        phase, n = state
        digit = 0x30 <= b <= 0x39
        # At most MAX_DIGITS bytes, and never a dead end: a sign, "." or "e" only with room for digits after it.
        if n >= MAX_DIGITS or (not digit and n + 3 > MAX_DIGITS):
            return []
        if phase in ("start", "sign"):
            if phase == "start" and b == 0x2D:
                return [("sign", 1)]
            return [("zero", n + 1)] if b == 0x30 else [("int", n + 1)] if digit else []  # no leading zeros
        if phase in ("int", "zero"):
            if digit and phase == "zero":
                return []
            if digit:
                return [("int", n + 1)]
            if self.integer:
                return []
            return [("dot", n + 1)] if b == 0x2E else [("e", n + 1)] if b in b"eE" else []
        if phase == "dot":
            return [("frac", n + 1)] if digit else []
        if phase == "frac":
            return [("frac", n + 1)] if digit else [("e", n + 1)] if b in b"eE" else []
        if phase == "e":
            return [("esign", n + 1)] if b in b"+-" else [("exp", n + 1)] if digit else []
        if phase in ("esign", "exp"):
            return [("exp", n + 1)] if digit else []
        return []

    def done(self, state: tuple[str, int]) -> bool:
        return state[0] in ("int", "zero", "frac", "exp")


@dataclass(frozen=True)
class Choice(Node):
    options: tuple[Node, ...]

    def first(self) -> list[Any]:
        return [(k, s) for k, o in enumerate(self.options) for s in o.first()]

    def step(self, state: tuple[int, Any], b: int) -> list[Any]:
        k, s = state
        return [(k, s2) for s2 in self.options[k].step(s, b)]

    def done(self, state: tuple[int, Any]) -> bool:
        return self.options[state[0]].done(state[1])


@dataclass(frozen=True)
class Concat(Node):
    parts: tuple[Node, ...]

    def _enter(self, i: int, s: Any) -> list[Any]:
        """State ``s`` of part ``i``, and, when that part is complete, the next parts' starts."""
        out = [(i, s)]
        if self.parts[i].done(s) and i + 1 < len(self.parts):
            for s2 in self.parts[i + 1].first():
                out += self._enter(i + 1, s2)
        return out

    def first(self) -> list[Any]:
        return [x for s in self.parts[0].first() for x in self._enter(0, s)]

    def step(self, state: tuple[int, Any], b: int) -> list[Any]:
        i, s = state
        return [x for s2 in self.parts[i].step(s, b) for x in self._enter(i, s2)]

    def done(self, state: tuple[int, Any]) -> bool:
        return state[0] == len(self.parts) - 1 and self.parts[-1].done(state[1])


@dataclass(frozen=True)
class Array(Node):
    """``[item, item, ...]`` with json.dumps' separator."""

    item: Node

    def first(self) -> list[Any]:
        return [("open", 0, None)]

    def step(self, state: tuple[str, int, Any], b: int) -> list[Any]:
        phase, n, s = state
        if phase == "open":
            return [("empty", 0, None)] if b == ord("[") else []
        if phase in ("empty", "space"):
            out = [("item", n + 1, s2) for s0 in self.item.first() for s2 in self.item.step(s0, b)]
            return out + ([("closed", n, None)] if phase == "empty" and b == ord("]") else [])
        if phase == "item":
            out = [("item", n, s2) for s2 in self.item.step(s, b)]
            if self.item.done(s):
                if b == ord(",") and n < MAX_ITEMS:
                    out.append(("comma", n, None))
                elif b == ord("]"):
                    out.append(("closed", n, None))
            return out
        if phase == "comma":
            return [("space", n, None)] if b == ord(" ") else []
        return []

    def done(self, state: tuple[str, int, Any]) -> bool:
        return state[0] == "closed"


@dataclass(frozen=True)
class TextWithCalls(Node):
    """Free text in which every ``opening`` tag starts a ``call`` (then free text again).

    The tag is tracked as the longest tail of the text that begins it (a KMP state), so the only way
    to write the tag is to start a call that follows ``call``.
    """

    opening: bytes
    call: Node

    def first(self) -> list[Any]:
        return [("text", 0)]

    def _advance(self, k: int, b: int) -> int:
        tag = self.opening
        while True:
            if tag[k] == b:
                return k + 1
            if k == 0:
                return 0
            k = _fail(tag)[k - 1]

    def step(self, state: tuple[str, Any], b: int) -> list[Any]:
        mode, s = state
        if mode == "text":
            k = self._advance(s, b)
            if k == len(self.opening):
                return [("call", c) for c in self.call.first()]
            return [("text", k)]
        out = [("call", s2) for s2 in self.call.step(s, b)]
        if self.call.done(s):
            out += self.step(("text", 0), b)
        return out

    def done(self, state: tuple[str, Any]) -> bool:
        return state[0] == "text" or self.call.done(state[1])


@lru_cache(maxsize=16)
def _fail(tag: bytes) -> tuple[int, ...]:
    """KMP failure function: for each prefix of ``tag``, the longest proper prefix that is also its suffix."""
    fail, k = [0] * len(tag), 0
    for i in range(1, len(tag)):
        while k and tag[i] != tag[k]:
            k = fail[k - 1]
        if tag[i] == tag[k]:
            k += 1
        fail[i] = k
    return tuple(fail)


# --------------------------------------------------------------------------- JSON schema → nodes


def _lit(text: str) -> Exact:
    return Exact(text.encode())


def schema_node(schema: dict[str, Any], root: dict[str, Any] | None = None, depth: int = 0) -> Node:
    """The node for values of ``schema`` as json.dumps writes them (``", "`` and ``": "`` separators)."""
    root = root if root is not None else schema
    if depth > 8:
        raise UnsupportedSchema("schema nested too deeply")
    if not isinstance(schema, dict):
        raise UnsupportedSchema(f"not a schema: {schema!r}")
    if "$ref" in schema:
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise UnsupportedSchema(f"only local $ref is supported, got {ref!r}")
        target: Any = root
        for key in ref[2:].split("/"):
            target = target.get(key) if isinstance(target, dict) else None
        if target is None:
            raise UnsupportedSchema(f"unresolved $ref {ref!r}")
        return schema_node(target, root, depth + 1)
    if "const" in schema:
        return _lit(json.dumps(schema["const"], ensure_ascii=False))
    if "enum" in schema:
        return Choice(tuple(_lit(json.dumps(v, ensure_ascii=False)) for v in schema["enum"]))
    if isinstance(schema.get("allOf"), list) and len(schema["allOf"]) == 1:  # pydantic's wrapped $ref
        return schema_node(schema["allOf"][0], root, depth + 1)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return Choice(tuple(schema_node(s, root, depth + 1) for s in schema[key]))
    kind = schema.get("type")
    if kind is None and "properties" in schema:
        kind = "object"
    if isinstance(kind, list):
        return Choice(tuple(schema_node({**schema, "type": k}, root, depth + 1) for k in kind))
    if kind == "string":
        return String()
    if kind in ("integer", "number"):
        return Number(integer=kind == "integer")
    if kind == "boolean":
        return Choice((_lit("true"), _lit("false")))
    if kind == "null":
        return _lit("null")
    if kind == "array":
        if not isinstance(schema.get("items"), dict):
            raise UnsupportedSchema("an array needs an 'items' schema")
        return Array(schema_node(schema["items"], root, depth + 1))
    if kind == "object":
        return object_node(schema, root, depth)
    raise UnsupportedSchema(f"unsupported schema {json.dumps(schema)[:80]}")


def object_node(schema: dict[str, Any], root: dict[str, Any] | None = None, depth: int = 0) -> Node:
    """Every property, in the schema's order; a property that is not required may be ``null``
    (the integrations drop such nulls, so the tool sees its default)."""
    root = root if root is not None else schema
    props = schema.get("properties") or {}
    if not isinstance(props, dict):
        raise UnsupportedSchema("'properties' must be an object")
    if not props and schema.get("additionalProperties") not in (None, False):
        raise UnsupportedSchema("free-form objects are not supported")
    required = set(schema.get("required") or [])
    parts: list[Node] = []
    for i, (key, sub) in enumerate(props.items()):
        parts.append(_lit(("{" if i == 0 else ", ") + json.dumps(key, ensure_ascii=False) + ": "))
        value = schema_node(sub, root, depth + 1)
        parts.append(value if key in required else Choice((value, _lit("null"))))
    parts.append(_lit("}" if props else "{}"))
    return Concat(tuple(parts))


# --------------------------------------------------------------------------- the grammar and its cursor


@dataclass(frozen=True)
class Grammar:
    """A reply's whole grammar; ``cursor()`` starts reading it."""

    node: Node

    def cursor(self) -> Cursor:
        return Cursor(self.node, frozenset(self.node.first()))

    def after(self, text: str) -> Cursor | None:
        """The cursor after ``text`` (the reply so far), or None if ``text`` left the grammar."""
        return self.cursor().feed(text.encode())


@dataclass(frozen=True)
class Cursor:
    """Where a reply stands in its grammar: the set of automaton states it may be in."""

    node: Node
    states: frozenset[Any]

    def feed(self, data: bytes) -> Cursor | None:
        states: set[Any] | frozenset[Any] = self.states
        for b in data:
            states = {s2 for s in states for s2 in self.node.step(s, b)}
            if not states:
                return None
        return Cursor(self.node, frozenset(states))

    @property
    def accepting(self) -> bool:
        return any(self.node.done(s) for s in self.states)

    @property
    def complete(self) -> bool:
        """Accepting with no byte left that could continue it: only end-of-sequence may follow."""
        return self.accepting and not any(self.node.step(s, b) for s in self.states for b in range(256))


# --------------------------------------------------------------------------- tokens


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the character a byte-level BPE token uses for each byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def token_bytes(tokenizer: Any) -> list[bytes | None]:
    """Each token id's bytes (None for special and added tokens), cached on the tokenizer."""
    cached = getattr(tokenizer, "_rsd_token_bytes", None)
    if cached is not None:
        return cached
    n = len(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special |= {i for i in getattr(tokenizer, "added_tokens_decoder", {}) or {}}
    dec = _byte_decoder()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    byte_level = backend is not None and "ByteLevel" in repr(getattr(backend, "decoder", ""))
    out: list[bytes | None] = []
    for i, p in enumerate(pieces):
        if i in special or p is None:
            out.append(None)
        elif byte_level and all(c in dec for c in p):
            out.append(bytes(dec[c] for c in p))
        elif len(p) == 6 and p.startswith("<0x") and p.endswith(">"):  # sentencepiece byte fallback
            out.append(bytes([int(p[3:5], 16)]))
        else:
            out.append(p.replace("\u2581", " ").encode())
    try:
        tokenizer._rsd_token_bytes = out
    except AttributeError:
        pass
    return out


class ConstrainedRows:
    """Picks the next token of the constrained rows of a batch, and moves their cursors along.

    ``rows`` maps a row of the logits to its cursor. A row whose cursor has been left (only possible
    when the tokenizer cannot spell what the grammar needs) is released, unconstrained.
    """

    CHUNK = 64

    def __init__(self, rows: dict[int, Cursor], tokenizer: Any, eos_ids: set[int], limit: int):
        self.rows, self.table, self.limit = dict(rows), token_bytes(tokenizer), limit
        self.eos = sorted(e for e in eos_ids if e < limit)

    def pick(self, logits: torch.Tensor, tok: torch.Tensor, live: list[bool], sampling: Any,
             draws: Draws | None) -> torch.Tensor:
        """``tok`` with each live constrained row's token replaced by an allowed one."""
        chosen: dict[int, int] = {}
        own = tok.tolist()
        for r, cur in list(self.rows.items()):
            if not live[r]:
                continue
            t = self._choose(logits[r, : self.limit], cur, own[r], sampling, draws, r)
            if t is None:
                del self.rows[r]
                continue
            chosen[r] = t
            data = self.table[t]
            if data is not None:
                nxt = cur.feed(data)
                if nxt is None:
                    del self.rows[r]
                else:
                    self.rows[r] = nxt
        chosen = {r: t for r, t in chosen.items() if t != own[r]}
        if not chosen:
            return tok
        tok = tok.clone()
        idx = torch.tensor(list(chosen), device=tok.device)
        tok[idx] = torch.tensor(list(chosen.values()), device=tok.device, dtype=tok.dtype)
        return tok

    def _choose(self, row: torch.Tensor, cur: Cursor, own: int, sampling: Any, draws: Draws | None,
                r: int) -> int | None:
        """``own`` (the token picked without the grammar) if the grammar allows it, which is the usual
        case; otherwise the most likely allowed token (greedy) or one sampled among the most likely
        allowed ones. Keeping an allowed sample and redrawing otherwise samples the masked distribution."""
        can_end = cur.accepting

        def allowed(i: int) -> bool:
            data = self.table[i]
            return (can_end and i in self.eos) or (bool(data) and cur.feed(data) is not None)  # type: ignore[arg-type]

        if own < len(self.table) and allowed(own):
            return own
        if cur.complete:
            return self.eos[0] if self.eos else None
        order = torch.argsort(row, descending=True)
        greedy = sampling is None or sampling.greedy

        for start in range(0, row.shape[0], self.CHUNK):
            ids = order[start : start + self.CHUNK].tolist()
            if greedy:  # the most likely allowed token
                first = next((i for i in ids if allowed(i)), None)
                if first is not None:
                    return first
                continue
            ok = [i for i in ids if allowed(i)]  # sampled among the most likely allowed tokens
            if ok:
                sub = row[torch.tensor(ok, device=row.device)][None]
                probs = filtered_probs(sub, sampling)[0]  # drawn from the row's own stream
                generator = draws.generator(r) if draws is not None else None
                return ok[int(torch.multinomial(probs, 1, generator=generator)[0])]
        return None
