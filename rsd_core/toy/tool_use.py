"""Tool-use lessons for the toy target: call a listed tool, read its result, fill a schema.

The toy target learns arithmetic first; then a second stage mixes these chats with arithmetic so it
also learns the ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` format that Qwen2.5 and
Hermes models write. Tools are random (names, descriptions and parameters drawn from word lists), in
the OpenAI function layout that LangChain's ``convert_to_openai_tool`` and LlamaIndex's
``to_openai_tool`` produce, and rendered by the toy chat template exactly as at inference. The names
the standard LangChain tests use (``magic_function``, ``get_weather``, ``Joke`` ...) are never drawn,
so those tests see tools the model has not seen.

Each lesson is ``(messages, tools, answer, forced)``: the chat, its tools, the assistant's reply, and
how many leading characters of the reply a caller would have forced (``tool_choice``), which are
not trained on.

Example:
    >>> msgs, tools, answer, forced = make_lesson(random.Random(3))
    >>> isinstance(answer, str) and isinstance(tools, list)
    True
"""

from __future__ import annotations

import json
import random
from typing import Any

from rsd_core.toy.task import make_problem

HELD_OUT_NAMES = {"magic_function", "magic_function_no_args", "greeting_generator", "get_weather",
                  "unicode_customer", "Joke", "JokeDict", "multiply", "add", "count_letters"}

VERBS = ["get", "find", "compute", "apply", "make", "check", "create", "lookup", "fetch", "convert", "send",
         "score", "rank", "build", "read", "plan", "draw", "tell", "list", "scale", "parse", "mix", "sum"]
NOUNS = ["weather", "price", "value", "customer", "greeting", "time", "score", "user", "order", "city", "number",
         "word", "item", "function", "magic", "color", "poem", "stock", "news", "route", "date", "name", "song",
         "recipe", "ticket", "report", "total", "square", "double", "note", "forecast", "record", "quote", "team"]
PARAMS_INT = ["input", "x", "y", "n", "a", "b", "count", "amount", "value", "number", "size", "level", "year", "k"]
PARAMS_STR = ["location", "city", "name", "text", "query", "style", "topic", "word", "title", "color", "place",
              "label", "mood", "language", "kind", "message", "code"]
TOPICS = ["cats", "dogs", "rain", "math", "pizza", "trains", "the sea", "robots", "books", "coffee", "snow",
          "birds", "music", "space", "apples", "chess", "bees", "clocks"]
STYLES = ["Pirate", "Cowboy", "Robot", "Poet", "Wizard", "Knight", "Happy", "Formal", "Sleepy", "Royal", "Ninja"]
WORDS = ["alpha", "blue", "sunny", "river", "stone", "green", "fast", "quiet", "maple", "delta", "echo", "amber"]
PLACE_PARTS = ["San", "New", "Port", "Lake", "North", "Fort", "Green", "Red", "El", "Bay"]
PLACE_ROOTS = ["Paris", "Denver", "York", "Austin", "Oslo", "Lima", "Dallas", "Boston", "Rome", "Tokyo", "Miami"]
STATES = ["CA", "NY", "TX", "WA", "FL", "OR", "MA", "CO"]
COMPANY = ["Group", "Corporation", "Company", "Trading", "Studio", "Labs", "Bank", "Works"]
KINDS = ["Chinese", "Japanese", "Korean", "French", "German", "local", "small", "new", "family"]
# CJK and kana ranges: arguments the model must copy byte for byte from the question.
_SCRIPTS = [(0x4E00, 0x4FFF), (0x3041, 0x3093), (0x30A1, 0x30F3), (0xAC00, 0xAD00)]


_CONS, _VOWELS = "bcdfghjklmnprstvwz", "aeiou"


def _pseudo(rng: random.Random) -> str:
    """A made-up word: names and values the model cannot guess from the word lists, only copy."""
    return "".join(rng.choice(_CONS) + rng.choice(_VOWELS) for _ in range(rng.randint(2, 4)))


def _unicode_name(rng: random.Random) -> str:
    lo, hi = rng.choice(_SCRIPTS)
    return "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(2, 6)))


def _snake(rng: random.Random) -> str:
    while True:
        r = rng.random()
        if r < 0.35:
            parts = [rng.choice(VERBS), rng.choice(NOUNS)]
        elif r < 0.7:  # made-up words: copying is the only way to get them right
            parts = [rng.choice(VERBS + [_pseudo(rng)]), _pseudo(rng)]
        else:
            parts = [_pseudo(rng)] if rng.random() < 0.5 else [rng.choice(NOUNS), _pseudo(rng)]
        if rng.random() < 0.25:
            parts.append(rng.choice(["value", "tool", "info", "data", "v2", "now"]))
        name = "_".join(parts)
        if name not in HELD_OUT_NAMES and parts[0] != parts[-1]:
            return name


def _camel(rng: random.Random) -> str:
    while True:
        stem = rng.choice(NOUNS) if rng.random() < 0.5 else _pseudo(rng)
        name = stem.capitalize() + (rng.choice(["", "Info", "Card", "Item", "Answer"]))
        if name not in HELD_OUT_NAMES:
            return name


def _prop(rng: random.Random, kind: str, pname: str, describe: bool) -> dict[str, Any]:
    prop: dict[str, Any] = {}
    if describe:
        prop["description"] = rng.choice([f"the {pname.replace('_', ' ')}", f"The {pname} to use.",
                                          f"{pname.replace('_', ' ').capitalize()} of the {rng.choice(NOUNS)}"])
    if rng.random() < 0.3:
        prop["title"] = pname.replace("_", " ").title()
    if kind == "int" and rng.random() < 0.2:
        prop["exclusiveMaximum"], prop["exclusiveMinimum"] = 1000, -1000
    prop["type"] = "integer" if kind == "int" else "string"
    return prop


def _tool(name: str, description: str, params: list[tuple[str, str]], rng: random.Random,
          describe: bool = False) -> dict[str, Any]:
    props = {p: _prop(rng, k, p, describe) for p, k in params}
    schema: dict[str, Any] = {"properties": props}
    if params:
        schema["required"] = [p for p, _ in params]
    schema["type"] = "object"
    if rng.random() < 0.3:  # LlamaIndex / TypedDict put "type" first
        schema = {"type": "object", **{k: v for k, v in schema.items() if k != "type"}}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": schema}}


def _random_tool(rng: random.Random, n_params: int | None = None) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    name = _snake(rng)
    n = rng.choice([0, 1, 1, 1, 2, 2]) if n_params is None else n_params
    params: list[tuple[str, str]] = []
    while len(params) < n:
        kind = "int" if rng.random() < 0.55 else "str"
        pname = rng.choice(PARAMS_INT if kind == "int" else PARAMS_STR) if rng.random() < 0.7 else _pseudo(rng)
        if pname not in [p for p, _ in params]:
            params.append((pname, kind))
    words = name.split("_")
    desc = rng.choice([f"{words[0].capitalize()} the {' '.join(words[1:])}.", f"Return the {words[-1]} of a {words[0]}.",
                       f"{words[0].capitalize()} a {words[-1]} for the user.", "Apply a tool to an input."])
    return _tool(name, desc, params, rng, describe=rng.random() < 0.4), params


def _value(rng: random.Random, kind: str) -> Any:
    if kind == "int":
        return rng.choice([rng.randint(0, 9), rng.randint(10, 99), rng.randint(100, 999)])
    return rng.choice([rng.choice(WORDS), rng.choice(STYLES), rng.choice(TOPICS), _unicode_name(rng), _pseudo(rng),
                       _pseudo(rng).capitalize()])


def _call(name: str, args: dict[str, Any]) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": args}, ensure_ascii=False) + "</tool_call>"


def _toolset(rng: random.Random, chosen: dict[str, Any]) -> list[dict[str, Any]]:
    others = [_random_tool(rng)[0] for _ in range(rng.choice([0, 0, 1, 2]))]
    tools = others + [chosen]
    rng.shuffle(tools)
    return tools


def _named_call(rng: random.Random) -> tuple[list[dict], list[dict], str, int]:
    tool, params = _random_tool(rng)
    name = tool["function"]["name"]
    args = {p: _value(rng, k) for p, k in params}
    shown = [json.dumps(v, ensure_ascii=False) if isinstance(v, str) else str(v) for v in args.values()]
    forms = [f"What is the value of {name}({', '.join(shown)})? Use the tool.",
             f"What is the value of {name}({', '.join(shown)})? You must use the tool.",
             f"Call {name} with " + (", ".join(f"{p} = {s}" for p, s in zip(args, shown)) or "no arguments") + ".",
             f"Use {name} on {', '.join(shown) or 'nothing'}.",
             f"Please run {name}({', '.join(f'{p}={s}' for p, s in zip(args, shown))})."]
    question = rng.choice(forms)
    return [{"role": "user", "content": question}], _toolset(rng, tool), _call(name, args), 0


def _described_call(rng: random.Random) -> tuple[list[dict], list[dict], str, int]:
    """The tool is named by what it does, not by its name; its one string argument is in the question."""
    kind = rng.randrange(3)
    if kind == 0:  # "What is the weather in San Francisco, CA?"
        noun, pname = rng.choice(NOUNS), rng.choice(["location", "city", "place"])
        root = rng.choice(PLACE_ROOTS) if rng.random() < 0.5 else _pseudo(rng).capitalize()
        place = f"{rng.choice(PLACE_PARTS)} {root}" if rng.random() < 0.5 else root
        if rng.random() < 0.5:
            place += f", {rng.choice(STATES)}"
        name = f"{rng.choice(['get', 'find', 'check', 'lookup'])}_{noun}"
        tool = _tool(name, f"Get the {noun} at a {pname}.", [(pname, "str")], rng, rng.random() < 0.3)
        q = rng.choice([f"What is the {noun} in {place}?", f"Find the {noun} for {place}.", f"How is the {noun} in {place}?"])
        args: dict[str, Any] = {pname: place}
    elif kind == 1:  # "Using the tool, generate a Pirate greeting."
        noun = rng.choice(["greeting", "poem", "song", "note", "story", "toast", "quote"])
        pname = rng.choice(["style", "answer_style", "mood", "tone", "voice"])
        name = f"{noun}_{rng.choice(['generator', 'maker', 'writer', 'tool'])}"
        desc = f"Generate a {noun} in a particular {pname.split('_')[-1]} of speaking."
        tool = _tool(name, desc, [(pname, "str")], rng, rng.random() < 0.3)
        style = rng.choice(STYLES) if rng.random() < 0.5 else _pseudo(rng).capitalize()
        q = rng.choice([f"Using the tool, generate a {style} {noun}.", f"Using the tool, write a {style} {noun}.",
                        f"Make a {noun} in {style} style with the tool."])
        args = {pname: style}
    else:  # "Create a customer named '你好啊集团' (Hello Group) - a Chinese technology company"
        noun = rng.choice(["customer", "user", "company", "client", "team", "shop"])
        name = f"{rng.choice(['create', 'add', 'make', 'new'])}_{noun}" if rng.random() < 0.7 else f"unicode_{noun}"
        who = _unicode_name(rng) if rng.random() < 0.7 else f"{_pseudo(rng).capitalize()} {rng.choice(COMPANY)}"
        what = f"a {rng.choice(KINDS)} {rng.choice(['technology', 'food', 'travel', 'music', 'trading'])} company"
        params = [(f"{noun}_name", "str"), ("description", "str")]
        tool = _tool(name, f"Tool for creating a {noun} with Unicode name.", params, rng, rng.random() < 0.5)
        q = f"Create a {noun} named '{who}' (Hello {rng.choice(COMPANY)}) - {what}"
        args = {f"{noun}_name": who, "description": what}
    return [{"role": "user", "content": q}], _toolset(rng, tool), _call(name, args), 0


def _schema_fill(rng: random.Random) -> tuple[list[dict], list[dict], str, int]:
    """``with_structured_output``: one schema-named tool, forced; its string fields take the question's topic."""
    name = _camel(rng)
    fields = rng.sample(["setup", "punchline", "title", "summary", "answer", "reason", "text", "line", "moral",
                         _pseudo(rng), _pseudo(rng), _pseudo(rng)], rng.randint(1, 3))
    topic = rng.choice(TOPICS) if rng.random() < 0.6 else _pseudo(rng)
    tool = _tool(name, f"{name} to tell user.", [(f, "str") for f in fields], rng, describe=rng.random() < 0.7)
    q = rng.choice([f"Tell me a {rng.choice(['joke', 'story', 'fact', 'poem'])} about {topic}.",
                    f"Write something about {topic}.", f"Describe {topic}."])
    args = {f: topic for f in fields}
    answer = _call(name, args)
    forced = len('<tool_call>{"name": "' + name + '", "arguments": ')
    return [{"role": "user", "content": q}], [tool], answer, forced


def _tool_result(rng: random.Random) -> tuple[list[dict], list[dict], str, int]:
    """After the tool's result comes back as a ``tool`` turn, answer with it."""
    msgs, tools, call, _ = _named_call(rng) if rng.random() < 0.6 else _described_call(rng)
    parsed = json.loads(call[len("<tool_call>"):-len("</tool_call>")])
    numeric = rng.random() < 0.5
    result = str(rng.randint(0, 999)) if numeric else rng.choice(
        ["It's sunny.", "Done.", f"Created: {rng.choice(WORDS)}", rng.choice(STYLES) + " hello!", rng.choice(WORDS)])
    history = msgs + [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": parsed["name"], "arguments": parsed["arguments"]}}]},
        {"role": "tool", "content": result, "tool_call_id": "call_1"},
    ]
    answer = f"The answer is \\boxed{{{result}}}." if numeric else f"The tool says: {result}"
    return history, tools, answer, 0


def _forced_unrelated(rng: random.Random) -> tuple[list[dict], list[dict], str, int]:
    """``tool_choice`` forces a call the question does not ask for: fill the arguments plausibly."""
    tool, params = _random_tool(rng)
    name = tool["function"]["name"]
    q = rng.choice(["Hello!", "Hi.", "Good morning!", "Who are you?", make_problem(rng).question])
    args = {p: (0 if k == "int" else rng.choice(WORDS)) for p, k in params}
    answer = _call(name, args)
    forced = len('<tool_call>{"name": "' + name + '", "arguments": ')
    return [{"role": "user", "content": q}], _toolset(rng, tool), answer, forced


def _arithmetic_with_tools(rng: random.Random) -> tuple[list[dict], list[dict], str, int]:
    """Tools on offer, but the question is the usual word problem: solve it, call nothing."""
    p = make_problem(rng)
    tools = [_random_tool(rng)[0] for _ in range(rng.randint(1, 2))]
    return [{"role": "user", "content": p.question}], tools, p.solution, 0


_LESSONS = [(_named_call, 0.30), (_described_call, 0.20), (_schema_fill, 0.12), (_tool_result, 0.18),
            (_forced_unrelated, 0.08), (_arithmetic_with_tools, 0.12)]


def make_lesson(rng: random.Random) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str, int]:
    """One tool-use chat: ``(messages, tools, answer, forced_chars)``."""
    r, acc = rng.random(), 0.0
    for fn, w in _LESSONS:
        acc += w
        if r < acc:
            return fn(rng)
    return _LESSONS[-1][0](rng)


# ReAct (LlamaIndex's ReActAgent): tools and the output format are described in a long system header,
# and the model answers in "Thought / Action / Action Input" or "Thought / Answer" lines.
REACT_THOUGHT_TOOL = ("Thought: The current language of the user is: English. I need to use a tool to help me "
                      "answer the question.")
REACT_THOUGHT_DONE = "Thought: I can answer without using any more tools. I'll use the user's language to answer"


def _react_tool(spec: dict[str, Any]) -> Any:
    """A LlamaIndex ``FunctionTool`` with this OpenAI-style schema (what ReActAgent describes in its header)."""
    from llama_index.core.tools import FunctionTool
    from pydantic import create_model

    f = spec["function"]
    fields = {p: (int if d["type"] == "integer" else str, ...) for p, d in f["parameters"]["properties"].items()}
    schema = create_model(f["name"], **fields)  # type: ignore[call-overload]
    sig = ", ".join(f"{p}: {'int' if t is int else 'str'}" for p, (t, _) in fields.items())
    return FunctionTool.from_defaults(fn=lambda **kw: None, name=f["name"], fn_schema=schema,
                                      description=f"{f['name']}({sig}) -> str\n{f['description']}")


def make_react_lesson(rng: random.Random) -> tuple[list[dict[str, Any]], str]:
    """One ReActAgent turn: ``(messages, answer)``, the messages exactly as LlamaIndex's formatter writes them."""
    from llama_index.core.agent.react.formatter import ReActChatFormatter
    from llama_index.core.agent.react.types import ActionReasoningStep, ObservationReasoningStep
    from llama_index.core.llms import ChatMessage

    kind = rng.random()
    if kind < 0.2:  # a word problem: answer it, no tool
        tools = [_random_tool(rng)[0] for _ in range(rng.randint(1, 2))]
        p = make_problem(rng)
        reasoning: list[Any] = []
        question, answer = p.question, f"{REACT_THOUGHT_DONE}\nAnswer: {p.solution}"
    else:
        msgs, tools, call, _ = _named_call(rng) if rng.random() < 0.7 else _described_call(rng)
        question = msgs[0]["content"]
        parsed = json.loads(call[len("<tool_call>"):-len("</tool_call>")])
        action = f"{REACT_THOUGHT_TOOL}\nAction: {parsed['name']}\nAction Input: " + json.dumps(
            parsed["arguments"], ensure_ascii=False)
        if kind < 0.6:
            reasoning, answer = [], action
        else:
            result = str(rng.randint(0, 999)) if rng.random() < 0.6 else rng.choice(
                ["It's sunny.", "Done.", f"Created: {rng.choice(WORDS)}", rng.choice(WORDS)])
            reasoning = [ActionReasoningStep(thought=REACT_THOUGHT_TOOL[len("Thought: "):], action=parsed["name"],
                                             action_input=parsed["arguments"]),
                         ObservationReasoningStep(observation=result)]
            answer = f"{REACT_THOUGHT_DONE}\nAnswer: {result}"
    chat = ReActChatFormatter.from_defaults().format([_react_tool(t) for t in tools],
                                                     [ChatMessage(role="user", content=question)], reasoning)
    return [{"role": m.role.value, "content": m.content} for m in chat], answer
