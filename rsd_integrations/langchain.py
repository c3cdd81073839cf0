"""``ChatRSD``: reward-guided speculative decoding as a LangChain chat model.

Example:
    >>> from rsd_integrations.langchain import ChatRSD
    >>> llm = ChatRSD()            # the embedded toy trio; or ChatRSD(model=..., draft_model=..., reward_model=...)
    >>> msg = llm.invoke("Ann has 12 apples. She buys 5 more. How many apples does Ann have now?")  # doctest: +SKIP
    >>> msg.response_metadata["rsd"]["acceptance_rate"]                                             # doctest: +SKIP

Every reasoning step and every target call is reported to LangChain callbacks, as custom events
``rsd_step`` and ``rsd_target_invocation`` (visible in ``astream_events``) and through
``RSDCallbackHandler.on_rsd_step`` / ``on_rsd_target_invocation``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextvars import ContextVar, Token
from typing import Any
from uuid import UUID, uuid4

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    BaseCallbackHandler,
    CallbackManagerForLLMRun,
)
from langchain_core.callbacks.manager import ahandle_event, handle_event
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import (
    ensure_config,
    get_async_callback_manager_for_config,
    get_callback_manager_for_config,
)
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, ConfigDict, Field

from rsd_core.decoder import RewardGuidedDecoder
from rsd_core.errors import InvalidPromptError
from rsd_core.events import RSDResult, StepEvent, TargetInvocationEvent
from rsd_core.messages import validate_messages
from rsd_core.options import RSDOptions
from rsd_core.tool_format import check_tool_binding
from rsd_integrations._shared import (
    ClosesItsDecoder,
    Request,
    awith_retries,
    get_decoder,
    get_scheduler,
    offered_tools,
    with_retries,
)

STEP_EVENT, TARGET_EVENT = "rsd_step", "rsd_target_invocation"

# LangChain calls ``_stream`` / ``_astream`` without a run manager (from ``stream``, ``astream``, and when
# ``invoke`` runs under ``astream_events`` or LangGraph). The public entry points below remember the
# caller's config here, so step events still reach the caller's callbacks.
_ambient_config: ContextVar[RunnableConfig | None] = ContextVar("rsd_ambient_config", default=None)


class _Sink:
    """Where one call's RSD events go when LangChain gave ``_stream`` no run manager."""

    def __init__(self, run_id: str | None):
        cfg = _ambient_config.get() or ensure_config()
        self.cfg = cfg
        prefix = "lc_run--"
        self.run_id = UUID(run_id[len(prefix):]) if run_id and run_id.startswith(prefix) else uuid4()

    def emit(self, payload: tuple[str, dict[str, Any]]) -> None:
        cm = get_callback_manager_for_config(self.cfg)
        handle_event(cm.handlers, "on_custom_event", "ignore_custom_event", *payload, run_id=self.run_id,
                     tags=cm.tags, metadata=cm.metadata)

    async def aemit(self, payload: tuple[str, dict[str, Any]]) -> None:
        cm = get_async_callback_manager_for_config(self.cfg)
        await ahandle_event(cm.handlers, "on_custom_event", "ignore_custom_event", *payload, run_id=self.run_id,
                            tags=cm.tags, metadata=cm.metadata)


def _remember_config(config: RunnableConfig | None) -> Token[RunnableConfig | None]:
    return _ambient_config.set(ensure_config(config))


def _forget_config(token: Token[RunnableConfig | None]) -> None:
    try:
        _ambient_config.reset(token)
    except ValueError:  # a generator finished in another context: nothing of ours is left there
        pass


class RSDCallbackHandler(BaseCallbackHandler):
    """Subclass and override ``on_rsd_step`` / ``on_rsd_target_invocation`` to watch RSD as it runs.

    Example:
        >>> class Printer(RSDCallbackHandler):
        ...     def on_rsd_step(self, step, **kw):
        ...         print(step["source"], step["reward"], step["accepted"])
        >>> ChatRSD().invoke("...", config={"callbacks": [Printer()]})  # doctest: +SKIP
    """

    def on_rsd_step(self, step: dict[str, Any], *, run_id: Any = None, **kwargs: Any) -> None:
        """A step was decided (``step`` is ``StepEvent.to_dict()``)."""

    def on_rsd_target_invocation(self, event: dict[str, Any], *, run_id: Any = None, **kwargs: Any) -> None:
        """The target was asked to write a step (``event`` is ``TargetInvocationEvent.to_dict()``)."""

    def on_custom_event(self, name: str, data: Any, *, run_id: Any, tags: list[str] | None = None,
                        metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if name == STEP_EVENT:
            self.on_rsd_step(data, run_id=run_id)
        elif name == TARGET_EVENT:
            self.on_rsd_target_invocation(data, run_id=run_id)


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(block.get("text", ""))
        elif isinstance(block, dict) and block.get("type") in ("tool_use", "tool_call"):
            continue  # carried by tool_calls
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise InvalidPromptError(f"{where} has a {kind!r} content block; these models read text only")
    return "".join(parts)


def to_chat_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as chat-template dicts (validated)."""
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"message {i} ({type(m).__name__})"
        if isinstance(m, SystemMessage):
            out.append({"role": "system", "content": _content_text(m.content, where)})
        elif isinstance(m, HumanMessage):
            out.append({"role": "user", "content": _content_text(m.content, where)})
        elif isinstance(m, AIMessage):
            d: dict[str, Any] = {"role": "assistant", "content": _content_text(m.content, where)}
            if m.tool_calls:
                d["tool_calls"] = [{"id": tc["id"], "type": "function",
                                    "function": {"name": tc["name"], "arguments": tc["args"]}} for tc in m.tool_calls]
            out.append(d)
        elif isinstance(m, ToolMessage):
            out.append({"role": "tool", "content": _content_text(m.content, where), "tool_call_id": m.tool_call_id})
        elif isinstance(m, ChatMessage):
            out.append({"role": m.role, "content": _content_text(m.content, where)})
        else:
            raise InvalidPromptError(f"{where}: unsupported message type {type(m).__name__}")
    return validate_messages(out)


def _step_record(e: StepEvent) -> dict[str, Any]:
    return {"sequence_index": e.sequence_index, "index": e.step_index, "source": e.source, "reward": e.reward,
            "weight": e.weight, "accepted": e.accepted, "num_tokens": e.num_tokens, "text": e.text}


class ChatRSD(RSDOptions, ClosesItsDecoder, BaseChatModel):
    """Reward-guided speculative decoding as a chat model: a draft writes, a PRM judges, a target fixes.

    Args:
        model: the target model (hub id or local path). None, with ``draft_model`` None, uses the toy trio.
        draft_model: the draft model.
        reward_model: the PRM (id/path); ``reward_type`` picks its family when it cannot be detected,
            ``reward_options`` are its format's options (``{"step_token": "\\n\\n"}``).
        threshold: δ; weighting: ω (binary, constant, clip, sigmoid, logistic).
        temperature / top_p: sampling for both models (0 = greedy); ``seed`` makes sampling repeatable.
        max_tokens, stop, max_steps, max_step_tokens: budgets and stop strings.
        device_map, dtype, trust_remote_code: as in transformers' ``from_pretrained``.
        decoder: an already-built ``RewardGuidedDecoder`` (overrides the model fields).
        timeout: seconds a call may wait for its result before ``TimeoutError``.
        max_retries: retries of a call that failed with CUDA out-of-memory (after freeing the cache).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    # The options shared with RSDLLM are RSDOptions' fields; LangChain's own names are aliases here.
    model: str | None = Field(default=None, alias="model_name")
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    streaming: bool = False
    decoder: RewardGuidedDecoder | None = Field(default=None, exclude=True)

    # ------------------------------------------------------------------ LangChain identity
    @property
    def _llm_type(self) -> str:
        return "rsd"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model_id, "draft_model": self.draft_model, "reward_model": self.reward_model,
                "threshold": self.threshold, "weighting": self.weighting, "temperature": self.temperature}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "rsd"
        params["ls_model_name"] = kwargs.get("model", self.model_id)
        params["ls_model_type"] = "chat"
        params["ls_temperature"] = kwargs.get("temperature", self.temperature)
        if self.max_tokens:
            params["ls_max_tokens"] = kwargs.get("max_tokens", self.max_tokens)
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    # ------------------------------------------------------------------ models and settings
    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` by the target model's tokenizer (what ``get_num_tokens`` counts)."""
        return list(self.get_decoder().target.tokenizer(text, add_special_tokens=False).input_ids)

    def get_decoder(self) -> RewardGuidedDecoder:
        """The shared decoder for these models (loaded on first use)."""
        if self.decoder is not None:
            return self.decoder
        return get_decoder(self.model_spec())

    def _request(self, messages: list[BaseMessage], stop: list[str] | None, loop: Any = None,
                 **kw: Any) -> tuple[RewardGuidedDecoder, Request]:
        self.check_call(kw, also=("model", "ls_structured_output_format", "stream"))  # LangChain's own
        if kw.get("model") not in (None, self.model_id, self.model):
            raise ValueError(f"this ChatRSD serves {self.model_id!r}, not {kw['model']!r}; make another ChatRSD")
        chat = to_chat_dicts(messages)
        dec = self.get_decoder()
        plan = dec.tool_format.plan(kw.get("tools") or None, kw.get("tool_choice"))
        stops = stop if stop is not None else self.stop
        return dec, Request(chat, self.to_config(dec.config, **kw), plan.tools, stops or None, loop,
                            reply_prefix=plan.reply_prefix, grammar=plan.grammar, timeout=self.timeout)

    # ------------------------------------------------------------------ results as messages
    def _message(self, res: RSDResult, tools: list[dict[str, Any]] | None) -> AIMessage:
        content, calls, bad = self.get_decoder().tool_format.parse(res.text, tools) if tools else (res.text, [], [])
        return AIMessage(
            content=content,
            tool_calls=[tool_call(name=c.name, args=c.arguments, id=c.id) for c in calls],
            invalid_tool_calls=[invalid_tool_call(name=b.name, args=b.raw, id=b.id, error=b.error) for b in bad],
            usage_metadata=self._usage(res),
            response_metadata=self._metadata(res),
        )

    def _usage(self, res: RSDResult) -> dict[str, Any]:
        s = res.stats
        return {
            "input_tokens": res.num_prompt_tokens,
            "output_tokens": res.num_output_tokens,
            "total_tokens": res.num_prompt_tokens + res.num_output_tokens,
            "input_token_details": {"draft_prefill": s.draft.prefill_tokens, "target_prefill": s.target.prefill_tokens,
                                    "reward_prefill": s.reward.prefill_tokens},
            "output_token_details": {"draft_decode": s.draft.decode_tokens, "target_decode": s.target.decode_tokens},
        }

    def _metadata(self, res: RSDResult) -> dict[str, Any]:
        stats = res.stats.to_dict()
        return {"model_name": self.model_id, "model_provider": "rsd", "finish_reason": res.finish_reason,
                "rsd": stats}

    # ------------------------------------------------------------------ events to LangChain callbacks
    @staticmethod
    def _event_payload(e: Any) -> tuple[str, dict[str, Any]] | None:
        if isinstance(e, StepEvent):
            return STEP_EVENT, e.to_dict()
        if isinstance(e, TargetInvocationEvent):
            return TARGET_EVENT, e.to_dict()
        return None

    def _emit(self, e: Any, run_manager: CallbackManagerForLLMRun | None, sink: _Sink | None = None) -> None:
        payload = self._event_payload(e)
        if payload is None:
            return
        if run_manager is not None:
            handle_event(run_manager.handlers, "on_custom_event", "ignore_custom_event", *payload,
                         run_id=run_manager.run_id, tags=run_manager.tags, metadata=run_manager.metadata)
        elif sink is not None:
            sink.emit(payload)

    async def _aemit(self, e: Any, run_manager: AsyncCallbackManagerForLLMRun | None,
                     sink: _Sink | None = None) -> None:
        payload = self._event_payload(e)
        if payload is None:
            return
        if run_manager is not None:
            await ahandle_event(run_manager.handlers, "on_custom_event", "ignore_custom_event", *payload,
                                run_id=run_manager.run_id, tags=run_manager.tags, metadata=run_manager.metadata)
        elif sink is not None:
            await sink.aemit(payload)

    # ------------------------------------------------------------------ entry points that keep the config
    def invoke(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
               stop: list[str] | None = None, **kwargs: Any) -> AIMessage:
        token = _remember_config(config)
        try:
            return super().invoke(input, config, stop=stop, **kwargs)
        finally:
            _forget_config(token)

    async def ainvoke(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
                      stop: list[str] | None = None, **kwargs: Any) -> AIMessage:
        token = _remember_config(config)
        try:
            return await super().ainvoke(input, config, stop=stop, **kwargs)
        finally:
            _forget_config(token)

    def stream(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
               stop: list[str] | None = None, **kwargs: Any) -> Iterator[AIMessageChunk]:
        token = _remember_config(config)
        try:
            yield from super().stream(input, config, stop=stop, **kwargs)
        finally:
            _forget_config(token)

    async def astream(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
                      stop: list[str] | None = None, **kwargs: Any) -> AsyncIterator[AIMessageChunk]:
        token = _remember_config(config)
        try:
            async for chunk in super().astream(input, config, stop=stop, **kwargs):
                yield chunk
        finally:
            _forget_config(token)

    # ------------------------------------------------------------------ sync
    def _run_sync(self, messages: list[BaseMessage], stop: list[str] | None,
                  run_manager: CallbackManagerForLLMRun | None, sink: _Sink | None = None,
                  streamer: _ChunkStreamer | None = None, **kwargs: Any) -> Iterator[Any]:
        dec, req = self._request(messages, stop, **kwargs)
        if streamer is not None:
            streamer.begin(req.reply_prefix)
        get_scheduler(dec).submit(req)
        for e in req.events():
            self._emit(e, run_manager, sink)
            yield e

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        if self.streaming:
            from langchain_core.language_models.chat_models import generate_from_stream

            return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))

        def once() -> RSDResult:
            return [e for e in self._run_sync(messages, stop, run_manager, **kwargs)][-1]

        res = with_retries(self.max_retries, once)
        return ChatResult(generations=[ChatGeneration(message=self._message(res, offered_tools(kwargs)))])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        streamer = _ChunkStreamer(self, offered_tools(kwargs))
        sink = None
        if run_manager is None:
            # LangChain names the run on the first chunk it sees: learn its id before any event.
            first = ChatGenerationChunk(message=AIMessageChunk(content=""))
            yield first
            sink = _Sink(first.message.id)
        for e in self._run_sync(messages, stop, run_manager, sink, streamer, **kwargs):
            for chunk in streamer.chunks(e):
                if run_manager and chunk.text:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    # ------------------------------------------------------------------ async (never blocks the loop)
    async def _run_async(self, messages: list[BaseMessage], stop: list[str] | None,
                         run_manager: AsyncCallbackManagerForLLMRun | None, sink: _Sink | None = None,
                         streamer: _ChunkStreamer | None = None, **kwargs: Any) -> AsyncIterator[Any]:
        import asyncio

        dec, req = self._request(messages, stop, loop=asyncio.get_running_loop(), **kwargs)
        if streamer is not None:
            streamer.begin(req.reply_prefix)
        get_scheduler(dec).submit(req)
        async for e in req.aevents():
            await self._aemit(e, run_manager, sink)
            yield e

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        if self.streaming:
            from langchain_core.language_models.chat_models import agenerate_from_stream

            return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))
        async def once() -> RSDResult:
            res = None
            async for e in self._run_async(messages, stop, run_manager, **kwargs):
                res = e
            assert isinstance(res, RSDResult)
            return res

        res = await awith_retries(self.max_retries, once)
        return ChatResult(generations=[ChatGeneration(message=self._message(res, offered_tools(kwargs)))])

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        streamer = _ChunkStreamer(self, offered_tools(kwargs))
        sink = None
        if run_manager is None:
            first = ChatGenerationChunk(message=AIMessageChunk(content=""))
            yield first
            sink = _Sink(first.message.id)
        async for e in self._run_async(messages, stop, run_manager, sink, streamer, **kwargs):
            for chunk in streamer.chunks(e):
                if run_manager and chunk.text:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    # ------------------------------------------------------------------ tools
    def bind_tools(self, tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool], *,
                   tool_choice: str | dict[str, Any] | bool | None = None,
                   **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        """Tools are rendered by the target's chat template; ``<tool_call>`` output becomes ``tool_calls``.

        ``tool_choice``: ``None``/``"auto"`` (the model decides), ``"none"`` (tools not offered),
        ``"any"``/``"required"``/``True`` (a call is forced: the reply starts with an opened
        ``<tool_call>``; with one tool, already naming it), or a tool's name (that tool is forced).
        The model writes the arguments.

        Example:
            >>> from langchain_core.tools import tool
            >>> @tool
            ... def multiply(a: int, b: int) -> int:
            ...     'Multiply two integers.'
            ...     return a * b
            >>> msg = ChatRSD().bind_tools([multiply], tool_choice="multiply").invoke("What is 6 times 7?")  # doctest: +SKIP
            >>> msg.tool_calls[0]["name"]  # doctest: +SKIP
            'multiply'
        """
        formatted = [convert_to_openai_tool(t) for t in tools]
        check_tool_binding(formatted, tool_choice)  # a bad name or choice fails here, not at invoke
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(self, schema: dict[str, Any] | type, *, include_raw: bool = False,
                               method: str = "function_calling", strict: bool | None = None,
                               **kwargs: Any) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Answers as ``schema`` (a pydantic class, a TypedDict or a JSON schema).

        Every ``method`` (``"function_calling"``, ``"json_schema"``, ``"json_mode"``) offers the schema
        as the model's one tool and forces the call (``tool_choice``), so the reply is a JSON object
        in the format the model was trained to write; the arguments are parsed (and validated, for
        pydantic classes). A schema is required: these models have no schema-free JSON mode.
        """
        if schema is None:
            raise ValueError("ChatRSD has no schema-free JSON mode: pass a schema (a pydantic class, TypedDict or JSON schema)")
        if method not in ("function_calling", "json_schema", "json_mode"):
            raise ValueError(f"unknown method {method!r}: use 'function_calling', 'json_schema' or 'json_mode'")
        from langchain_core.output_parsers.openai_tools import JsonOutputKeyToolsParser, PydanticToolsParser
        from langchain_core.runnables import RunnableMap, RunnablePassthrough
        from langchain_core.utils.pydantic import is_basemodel_subclass

        if kwargs:
            raise ValueError(f"with_structured_output does not take {sorted(kwargs)}")
        llm = self.bind_tools([schema], tool_choice="any",
                              ls_structured_output_format={"kwargs": {"method": method, "strict": strict},
                                                           "schema": schema})
        parser: Runnable
        if isinstance(schema, type) and is_basemodel_subclass(schema):
            parser = PydanticToolsParser(tools=[schema], first_tool_only=True)
        else:
            parser = JsonOutputKeyToolsParser(key_name=convert_to_openai_tool(schema)["function"]["name"],
                                              first_tool_only=True)
        if not include_raw:
            return llm | parser
        with_parsed = RunnablePassthrough.assign(parsed=lambda x: parser.invoke(x["raw"]), parsing_error=lambda _: None)
        fallback = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | with_parsed.with_fallbacks([fallback], exception_key="parsing_error")


class _ChunkStreamer:
    """Turns RSD events into chat chunks: the text of each accepted step, token by token."""

    def __init__(self, llm: ChatRSD, tools: list[dict[str, Any]] | None):
        self.llm, self.tools = llm, tools
        self.filter = llm.get_decoder().tool_format.stream_filter() if tools else None
        self._tok = None

    def begin(self, reply_prefix: str) -> None:
        """The request's forced reply start (an opened tool call): part of the reply, never shown as content."""
        if self.filter is not None:
            self.filter.feed(reply_prefix)

    def _tokenizer(self, source: str) -> Any:
        dec = self.llm.get_decoder()
        return (dec.draft if source == "draft" else dec.target).tokenizer

    def chunks(self, e: Any) -> Iterator[ChatGenerationChunk]:
        if isinstance(e, StepEvent) and e.accepted:
            # Only accepted steps are shown: a rejected draft step is never streamed and taken back.
            pieces = _token_pieces(self._tokenizer(e.source), e.token_ids, e.text)
            meta = {"rsd_steps": [_step_record(e)]}
            for k, piece in enumerate(pieces):
                text = self.filter.feed(piece) if self.filter else piece
                yield ChatGenerationChunk(message=AIMessageChunk(
                    content=text, response_metadata=meta if k == 0 else {}))
        elif isinstance(e, RSDResult):
            tail = self.filter.finish() if self.filter else ""
            msg = self.llm._message(e, self.tools)
            chunks = [tool_call_chunk(name=tc["name"], args=json.dumps(tc["args"], ensure_ascii=False), id=tc["id"], index=i)
                      for i, tc in enumerate(msg.tool_calls)]
            meta = self.llm._metadata(e)
            yield ChatGenerationChunk(message=AIMessageChunk(
                content=tail, tool_call_chunks=chunks, usage_metadata=msg.usage_metadata,
                response_metadata=meta, chunk_position="last"))


def _token_pieces(tokenizer: Any, ids: list[int], text: str) -> list[str]:
    """The step's text cut at token boundaries (pieces that add up to ``text`` exactly).

    Incremental detokenization over a short sliding window (as serving engines do), so a step costs
    O(tokens), and a multi-byte character split across tokens is emitted whole.
    """
    pieces: list[str] = []
    prefix, read = 0, 0
    for k in range(1, len(ids) + 1):
        before = tokenizer.decode(ids[prefix:read], skip_special_tokens=True)
        now = tokenizer.decode(ids[prefix:k], skip_special_tokens=True)
        if len(now) > len(before) and not now.endswith("\ufffd") and now.startswith(before):
            pieces.append(now[len(before):])
            prefix, read = read, k
    if "".join(pieces) != text:  # decoding in pieces disagreed with the whole: fall back to one piece
        return [text] if text else []
    return pieces


