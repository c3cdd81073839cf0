"""Grammars for forced tool calls: what they accept, and decoding under them (plain and fast paths)."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from rsd_core import RewardGuidedDecoder, RSDConfig
from rsd_core.backends.hf import HFGenerator
from rsd_core.config import SamplingConfig
from rsd_core.constraints import UnsupportedSchema, object_node, token_bytes
from rsd_core.tool_format import HERMES
from rsd_core.toy import toy_model_paths


@pytest.fixture(scope="module")
def toy_paths() -> dict[str, str]:
    return toy_model_paths()


def fn(name: str, params: dict) -> dict:
    return {"type": "function", "function": {"name": name, "description": "", "parameters": params}}


class Address(BaseModel):
    city: str
    zip: int | None = None


class Customer(BaseModel):
    name: str
    tags: list[str]
    address: Address
    kind: str = "person"


CUSTOMER = fn("customer", Customer.model_json_schema())  # $defs, $ref, anyOf with null, defaults
SQUARE = fn("square", {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]})
MIXED = fn("mixed", {"type": "object", "properties": {
    "f": {"type": "number"}, "b": {"type": "boolean"}, "e": {"enum": ["a", "b c", 3]},
    "n": {"type": ["string", "null"]}, "o": {"type": "string"},
    "w": {"allOf": [{"$ref": "#/$defs/Size"}], "description": "wrapped"}},
    "required": ["f", "b", "e", "n"], "$defs": {"Size": {"enum": ["S", "M"]}}})


def call(name: str, args: dict) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": args}, ensure_ascii=False) + "</tool_call>"


@pytest.mark.parametrize("text", [
    call("square", {"x": 12}),
    call("square", {"x": -3}),
    call("customer", {"name": "你好", "tags": [], "address": {"city": "Zürich", "zip": None}, "kind": "firm"}),
    call("customer", {"name": 'a "q"', "tags": ["x", "y z"], "address": {"city": "B", "zip": 8001}, "kind": None}),
    call("mixed", {"f": 1.5e-3, "b": False, "e": "b c", "n": None, "o": None, "w": "M"}),
    call("mixed", {"f": -2, "b": True, "e": 3, "n": "x", "o": "y", "w": None}),
])
def test_grammar_accepts_every_well_formed_call(text):
    cur = HERMES.call_grammar([SQUARE, CUSTOMER, MIXED]).after(text)
    assert cur is not None and cur.accepting and cur.complete


@pytest.mark.parametrize("text, why", [
    (call("cube", {"x": 1}), "unknown tool"),
    (call("square", {"x": "12"}), "string for an integer"),
    (call("square", {"x": 1.5}), "fraction for an integer"),
    (call("square", {"y": 1}), "wrong key"),
    (call("square", {}), "missing required key"),
    (call("square", {"x": 1, "y": 2}), "extra key"),
    (call("mixed", {"f": 1, "b": "yes", "e": "a", "n": None, "o": None, "w": None}), "string for a boolean"),
    (call("mixed", {"f": 1, "b": True, "e": "z", "n": None, "o": None, "w": None}), "not in the enum"),
    (call("mixed", {"f": 1, "b": True, "e": "a", "n": None, "o": None, "w": "XL"}), "not in a referenced enum"),
    (call("square", {"x": 1}) + " and more", "text after the call"),
    ('<tool_call>{"name": "square", "arguments": {"x": 1}}', "unclosed call (not complete, but a valid prefix)"),
    ('<tool_call>{"name": "square", "arguments": {"x": 1 }}</tool_call>', "spacing json.dumps does not write"),
    ('<tool_call>{"name": "customer", "arguments": {"name": "a\nb"', "a raw newline in a string"),
])
def test_grammar_rejects_what_does_not_fit(text, why):
    cur = HERMES.call_grammar([SQUARE, CUSTOMER, MIXED]).after(text)
    if why.startswith("unclosed"):
        assert cur is not None and not cur.accepting
    else:
        assert cur is None, why


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {}, "additionalProperties": True},  # free-form object
    {"type": "object", "properties": {"xs": {"type": "array"}}},          # array with no item schema
    {"type": "object", "properties": {"r": {"$ref": "https://example.com/s.json"}}},
])
def test_schemas_the_grammar_cannot_express_are_reported(schema):
    with pytest.raises(UnsupportedSchema):
        object_node(schema)


def test_token_bytes_spell_what_the_tokenizer_encodes(toy_paths):
    gen = HFGenerator.from_pretrained(toy_paths["target"])
    table = token_bytes(gen.tokenizer)
    text = '{"customer_name": "你好啊集团", "x": -12.5}\n'
    ids = gen.tokenizer(text, add_special_tokens=False).input_ids
    assert b"".join(table[i] for i in ids) == text.encode()
    assert all(table[i] is None for i in gen.eos_ids)


@pytest.fixture(scope="module")
def toy(toy_paths):
    return RewardGuidedDecoder.from_pretrained(toy_paths["draft"], toy_paths["target"], toy_paths["prm"])


QUESTIONS = ["What is 12 squared? Use the tool.", "Create a customer named Ann in Bern.",
             "Call mixed with anything.", "Tell me a joke."]


@pytest.mark.parametrize("threshold, temperature", [(0.0, 1.0), (0.7, 0.0), (0.7, 1.0), (1.0, 0.0)])  # draft only,
# RSD (greedy and sampled), target only
@pytest.mark.slow
def test_every_reply_under_the_grammar_is_a_call_that_fits(toy, threshold, temperature):
    tools = [SQUARE, CUSTOMER, MIXED]
    grammar = HERMES.call_grammar(tools)
    sampling = SamplingConfig(temperature=temperature)
    cfg = RSDConfig(threshold=threshold, max_new_tokens=400, seed=3, draft_sampling=sampling, target_sampling=sampling)
    prompts = [[{"role": "user", "content": q}] for q in QUESTIONS]
    for r in toy.generate(prompts, config=cfg, tools=tools, reply_prefix='<tool_call>{"name": "', grammar=grammar):
        if r.finish_reason == "max_new_tokens":  # a long string value may run out of tokens: still a prefix
            assert grammar.after(r.text) is not None
            continue
        assert r.finish_reason == "eos", r.text
        obj = json.loads(r.text.removeprefix("<tool_call>").removesuffix("</tool_call>"))
        assert obj["name"] in ("square", "customer", "mixed")
        args = obj["arguments"]
        if obj["name"] == "square":
            assert isinstance(args["x"], int)
        elif obj["name"] == "customer":
            Customer.model_validate({k: v for k, v in args.items() if v is not None})
        else:
            assert isinstance(args["b"], bool) and args["e"] in ("a", "b c", 3)


def test_a_reply_prefix_outside_the_grammar_is_refused(toy):
    with pytest.raises(ValueError, match="does not fit the grammar"):
        toy.generate([[{"role": "user", "content": "hi"}]], tools=[SQUARE], reply_prefix="Sure!",
                     grammar=HERMES.call_grammar([SQUARE]))


def test_the_fast_path_picks_the_same_constrained_tokens(toy_paths):
    cfg = RSDConfig(max_new_tokens=200, max_step_tokens=16)
    plain = RewardGuidedDecoder(HFGenerator.from_pretrained(toy_paths["draft"]),
                                HFGenerator.from_pretrained(toy_paths["target"]), None, RSDConfig(threshold=1.0))
    fast = RewardGuidedDecoder(HFGenerator.from_pretrained(toy_paths["draft"], fast=True, max_len=2048),
                               HFGenerator.from_pretrained(toy_paths["target"], fast=True, max_len=2048), None,
                               RSDConfig(threshold=1.0))
    prompts = [[{"role": "user", "content": q}] for q in QUESTIONS]
    kw = {"tools": [SQUARE, MIXED], "reply_prefix": "<tool_call>", "grammar": HERMES.call_grammar([SQUARE, MIXED]),
          "config": cfg.model_copy(update={"threshold": 1.0})}
    a, b = plain.generate(prompts, **kw), fast.generate(prompts, **kw)
    assert [r.text for r in a] == [r.text for r in b]
    assert all(HERMES.call_grammar([SQUARE, MIXED]).after(r.text).complete for r in a)


def test_the_caps_on_values_never_leave_a_reply_with_no_way_on():
    """At the caps on string length, digits and array items, the value can still be closed."""
    from rsd_core.constraints import MAX_DIGITS, MAX_ITEMS, MAX_STRING_BYTES

    g = HERMES.call_grammar([SQUARE, CUSTOMER])
    name = g.after('<tool_call>{"name": "customer", "arguments": {"name": "' + "a" * MAX_STRING_BYTES)
    assert name.feed(b"a") is None and name.feed(b'", "tags": [') is not None
    x = g.after('<tool_call>{"name": "square", "arguments": {"x": ' + "1" * MAX_DIGITS)
    assert x.feed(b"1") is None and x.feed(b"}}</tool_call>").complete
    tags = g.after('<tool_call>{"name": "customer", "arguments": {"name": "a", "tags": ['
                   + ", ".join(['"t"'] * MAX_ITEMS))
    assert tags.feed(b",") is None and tags.feed(b'], "address": {') is not None
    f = HERMES.call_grammar([MIXED]).after('<tool_call>{"name": "mixed", "arguments": {"f": ' + "1" * (MAX_DIGITS - 2))
    assert f.feed(b".") is None and f.feed(b"e") is None and f.feed(b", ") is not None


# --------------------------------------------------------------------------- fuzzed: schemas and their values

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)  # control characters come escaped
_scalars = st.sampled_from([
    ({"type": "string"}, _text),
    ({"type": "integer"}, st.integers(-10**9, 10**9)),
    ({"type": "number"}, st.floats(allow_nan=False, allow_infinity=False, width=32)),
    ({"type": "boolean"}, st.booleans()),
    ({"enum": ["red", "green", 3]}, st.sampled_from(["red", "green", 3])),
    ({"type": ["string", "null"]}, st.one_of(st.none(), _text)),
])


@st.composite
def value_schema(draw, depth: int):
    """A (schema, value that fits it) pair: scalars, arrays of scalars, objects (nested up to ``depth``)."""
    kind = draw(st.sampled_from(["scalar", "scalar", "array", "object"] if depth > 0 else ["scalar", "array"]))
    if kind == "scalar":
        schema, values = draw(_scalars)
        return schema, draw(values)
    if kind == "array":
        schema, values = draw(_scalars)
        return {"type": "array", "items": schema}, draw(st.lists(values, max_size=3))
    return draw(object_schema(depth - 1))


@st.composite
def object_schema(draw, depth: int = 1):
    keys = draw(st.lists(st.text("abcdefgh_", min_size=1, max_size=6), max_size=3, unique=True))
    props, value, required = {}, {}, []
    for k in keys:
        props[k], v = draw(value_schema(depth))
        if draw(st.booleans()):
            required.append(k)
            value[k] = v
        else:
            value[k] = draw(st.sampled_from([None, v]))  # an optional parameter may be left null
    return {"type": "object", "properties": props, "required": required}, value


@settings(max_examples=300, deadline=None)
@given(object_schema(), st.data())
def test_fuzzed_schemas_accept_their_values_and_refuse_broken_ones(sv, data):
    schema, args = sv
    g = HERMES.call_grammar([fn("f", schema)])
    text = call("f", args)
    cur = g.after(text)
    assert cur is not None and cur.complete, text
    # Every strict prefix is a live, unfinished reply; cutting a byte out of the middle breaks it
    # (unless the cut happens to leave another valid call).
    raw = text.encode()
    cut = data.draw(st.integers(1, len(raw) - 2))
    assert g.cursor().feed(raw[:cut]) is not None and not g.cursor().feed(raw[:cut]).complete
    broken = raw[:cut] + raw[cut + 1:]
    try:
        still_valid = json.loads(broken.decode()[len("<tool_call>"):-len("</tool_call>")])["arguments"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        still_valid = None
    if still_valid is None:
        after = g.cursor().feed(broken)
        assert after is None or not after.complete, broken


# --------------------------------------------------------------------------- text with calls (tool_choice="auto")


@pytest.mark.parametrize("opening", ["<tool_call>", "<tool_call>\n"])
def test_text_and_calls_lets_text_through_and_holds_every_call(opening):
    g = HERMES.for_template(opening + '{{ x }}').text_grammar([SQUARE, MIXED])
    ok = ["", "Just text, with <tool and </tool_call> and {json}.", "Let me look.\n" + call("square", {"x": 3}),
          call("square", {"x": 3}) + "\n" + call("square", {"x": 4}) + "\nDone.",
          '<tool_call>\n{"name": "square", "arguments": {"x": 3}}\n</tool_call>']
    for text in ok:
        cur = g.after(text)
        assert cur is not None and cur.accepting, text
    for text in ['<tool_call>{"name": "cube"', '<tool_call>{"name": "square", "arguments": {"x": "3"}}',
                 '<tool_call>[{"name": "square"', "ok <tool_call>oops", '<tool_call>{"name": "square", "arguments": {}}']:
        assert g.after(text) is None or not g.after(text).accepting, text
    unfinished = g.after('Sure. <tool_call>{"name": "square", "arguments": {"x": 1')
    assert unfinished is not None and not unfinished.accepting  # a cut-off call cannot end the reply


def test_auto_grammar_keeps_the_toys_own_calls_valid(toy):
    """With tools offered and no call forced, the toy decides; whatever it writes parses, with a real tool."""
    tools = [SQUARE, MIXED]
    grammar = HERMES.text_grammar(tools)
    prompts = [[{"role": "user", "content": q}] for q in
               ["What is the value of square(12)? Use the tool.", "Call mixed.", "Ann has 3 apples. She buys 4 more. "
                "How many apples does Ann have now?"]]
    for r in toy.generate(prompts, config=RSDConfig(max_new_tokens=300), tools=tools, grammar=grammar):
        cur = grammar.after(r.text)
        assert cur is not None and (cur.accepting or r.finish_reason != "eos"), r.text
        for block in r.text.split("<tool_call>")[1:]:
            obj = json.loads(block.split("</tool_call>")[0])
            assert obj["name"] in ("square", "mixed")
