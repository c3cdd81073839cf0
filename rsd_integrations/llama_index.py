"""``RSDLLM``: reward-guided speculative decoding as a LlamaIndex function-calling LLM.

Example:
    >>> from llama_index.core import Settings
    >>> from rsd_integrations.llama_index import RSDLLM
    >>> Settings.llm = RSDLLM()      # the embedded toy trio; or RSDLLM(model=..., draft_model=..., reward_model=...)
    >>> RSDLLM().complete("Ann has 12 apples. She buys 5 more. How many apples does Ann have now?").text  # doctest: +SKIP

Each reasoning step and each target call is dispatched as an instrumentation event (``RSDStepEvent``,
``RSDTargetInvocationEvent``) inside the LLM call's span, so handlers added with
``get_dispatcher().add_event_handler(...)`` receive them with that call's ``span_id``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.span import active_span_id
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection

from rsd_core.decoder import RewardGuidedDecoder
from rsd_core.errors import InvalidPromptError
from rsd_core.events import RSDResult, StepEvent, TargetInvocationEvent
from rsd_core.messages import validate_messages
from rsd_core.options import RSDOptions
from rsd_integrations._shared import (
    ClosesItsDecoder,
    Request,
    awith_retries,
    get_decoder,
    get_scheduler,
    offered_tools,
    with_retries,
)

dispatcher = get_dispatcher(__name__)


class RSDStepEvent(BaseEvent):
    """A reasoning step was decided (see ``rsd_core.events.StepEvent``)."""

    sequence_index: int
    step_index: int
    text: str
    source: str
    reward: float | None
    weight: float | None
    accepted: bool
    num_tokens: int

    @classmethod
    def class_name(cls) -> str:
        return "RSDStepEvent"


class RSDTargetInvocationEvent(BaseEvent):
    """The target model was asked to write a step."""

    sequence_index: int
    step_index: int
    reason: str
    rejected_text: str | None
    rejected_reward: float | None
    catch_up_tokens: int
    num_tokens: int

    @classmethod
    def class_name(cls) -> str:
        return "RSDTargetInvocationEvent"


def _li_event(e: Any, span_id: str | None) -> BaseEvent | None:
    if isinstance(e, StepEvent):
        return RSDStepEvent(span_id=span_id, sequence_index=e.sequence_index, step_index=e.step_index, text=e.text,
                            source=e.source, reward=e.reward, weight=e.weight, accepted=e.accepted,
                            num_tokens=e.num_tokens)
    if isinstance(e, TargetInvocationEvent):
        return RSDTargetInvocationEvent(span_id=span_id, sequence_index=e.sequence_index, step_index=e.step_index,
                                        reason=e.reason, rejected_text=e.rejected_text,
                                        rejected_reward=e.rejected_reward, catch_up_tokens=e.catch_up_tokens,
                                        num_tokens=e.num_tokens)
    return None


def to_chat_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """LlamaIndex messages as chat-template dicts (validated)."""
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, ChatMessage):
            raise InvalidPromptError(f"message {i} is a {type(m).__name__}, expected a llama_index ChatMessage")
        role = m.role.value if isinstance(m.role, MessageRole) else str(m.role)
        role = {"model": "assistant", "function": "tool", "developer": "system", "chatbot": "assistant"}.get(role, role)
        d: dict[str, Any] = {"role": role, "content": m.content or ""}
        calls = m.additional_kwargs.get("tool_calls")
        if calls:
            d["tool_calls"] = calls
        if role == "tool":
            d["tool_call_id"] = m.additional_kwargs.get("tool_call_id")
        out.append(d)
    return validate_messages(out)


class RSDLLM(RSDOptions, ClosesItsDecoder, FunctionCallingLLM):
    """Reward-guided speculative decoding behind LlamaIndex's LLM interface.

    The options are ``ChatRSD``'s (``RSDOptions``): ``model`` (target), ``draft_model``, ``reward_model``
    (``reward_type``, ``reward_options``),
    ``threshold``, ``weighting``, ``temperature``, ``max_tokens``, ``stop``, device and dtype options; or
    ``decoder=`` an already-built ``RewardGuidedDecoder``.
    """

    _decoder: RewardGuidedDecoder | None = PrivateAttr(default=None)

    def __init__(self, decoder: RewardGuidedDecoder | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._decoder = decoder

    @classmethod
    def class_name(cls) -> str:
        return "RSDLLM"

    # ------------------------------------------------------------------ models and metadata
    def get_decoder(self) -> RewardGuidedDecoder:
        if self._decoder is None:
            self._decoder = get_decoder(self.model_spec())
        return self._decoder

    def tokenize(self, text: str) -> list[int]:
        """The target's token ids for ``text``: LlamaIndex's tokenizer for this model
        (``TokenCountingHandler(tokenizer=llm.tokenize)``, ``Settings.tokenizer = llm.tokenize``)."""
        return list(self.get_decoder().target.tokenizer(text, add_special_tokens=False).input_ids)

    @property
    def metadata(self) -> LLMMetadata:
        dec = self.get_decoder()
        template = getattr(dec.target.tokenizer, "chat_template", None) or ""
        return LLMMetadata(
            context_window=min(dec.target.context_length, dec.draft.context_length),
            num_output=self.max_tokens or dec.config.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model="tools" in template,
            model_name=self.model_id,
        )

    def _request(self, messages: Sequence[ChatMessage], loop: Any = None, **kw: Any) -> tuple[Request, list[dict[str, Any]] | None]:
        self.check_call(kw)
        chat = to_chat_dicts(messages)
        offered = kw.get("tools") or None
        dec = self.get_decoder()
        plan = dec.tool_format.plan(offered, kw.get("tool_choice"))
        req = Request(chat, self.to_config(dec.config, **kw), plan.tools, kw.get("stop", self.stop) or None, loop,
                      reply_prefix=plan.reply_prefix, grammar=plan.grammar, timeout=self.timeout)
        get_scheduler(dec).submit(req)
        return req, offered_tools(kw)

    # ------------------------------------------------------------------ results
    def _response(self, res: RSDResult, tools: list[dict[str, Any]] | None) -> ChatResponse:
        content, calls, bad = self.get_decoder().tool_format.parse(res.text, tools) if tools else (res.text, [], [])
        extra: dict[str, Any] = {"rsd": res.stats.to_dict(), "finish_reason": res.finish_reason}
        if calls:
            extra["tool_calls"] = [c.to_dict() for c in calls]
        if bad:
            extra["invalid_tool_calls"] = [{"raw": b.raw, "error": b.error} for b in bad]
        s = res.stats
        usage = {"prompt_tokens": res.num_prompt_tokens, "completion_tokens": res.num_output_tokens,
                 "total_tokens": res.num_prompt_tokens + res.num_output_tokens,
                 "draft": s.draft.to_dict(), "target": s.target.to_dict(), "reward": s.reward.to_dict()}
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=content, additional_kwargs=extra),
                            raw={"usage": usage, "result": res.to_dict()}, additional_kwargs=extra)

    # ------------------------------------------------------------------ chat
    # Each public method reports one LLM event (``llm_*_callback``); a completion runs the chat bodies
    # below directly, so token counters (``TokenCountingHandler``) see it once.
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat(messages, **kwargs)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._stream_chat(messages, **kwargs)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await self._achat(messages, **kwargs)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        return await self._astream_chat(messages, **kwargs)

    def _chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        span_id = active_span_id.get()

        def once() -> ChatResponse:
            req, tools = self._request(messages, **kwargs)
            res = None
            for e in req.events():
                ev = _li_event(e, span_id)
                if ev is not None:
                    dispatcher.event(ev)
                res = e
            return self._response(res, tools)

        return with_retries(self.max_retries, once)

    def _stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        span_id = active_span_id.get()
        req, tools = self._request(messages, **kwargs)
        return self._stream_from(req.events(), span_id, tools, req.reply_prefix)

    def _stream_from(self, events: Iterator[Any], span_id: str | None, tools: list[dict[str, Any]] | None,
                     prefix: str = "") -> ChatResponseGen:
        deltas = _Deltas(self, span_id, tools, prefix)
        for e in events:
            if (r := deltas.on(e)) is not None:
                yield r

    async def _achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        span_id = active_span_id.get()

        async def once() -> ChatResponse:
            req, tools = self._request(messages, loop=asyncio.get_running_loop(), **kwargs)
            res = None
            async for e in req.aevents():
                ev = _li_event(e, span_id)
                if ev is not None:
                    dispatcher.event(ev)
                res = e
            return self._response(res, tools)

        return await awith_retries(self.max_retries, once)

    async def _astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        span_id = active_span_id.get()
        req, tools = self._request(messages, loop=asyncio.get_running_loop(), **kwargs)

        async def gen() -> AsyncIterator[ChatResponse]:
            deltas = _Deltas(self, span_id, tools, req.reply_prefix)
            async for e in req.aevents():
                if (r := deltas.on(e)) is not None:
                    yield r

        return gen()

    # ------------------------------------------------------------------ completion (a one-turn chat)
    @staticmethod
    def _as_chat(prompt: str, formatted: bool) -> list[ChatMessage]:
        if not isinstance(prompt, str) or not prompt:
            raise InvalidPromptError(f"the prompt must be a non-empty string, got {prompt!r:.60}")
        return [ChatMessage(role=MessageRole.USER, content=prompt)]

    @staticmethod
    def _completion(r: ChatResponse) -> CompletionResponse:
        return CompletionResponse(text=r.message.content or "", delta=r.delta, raw=r.raw,
                                  additional_kwargs=r.additional_kwargs)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._completion(self._chat(self._as_chat(prompt, formatted), **kwargs))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        gen = self._stream_chat(self._as_chat(prompt, formatted), **kwargs)
        return (self._completion(r) for r in gen)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._completion(await self._achat(self._as_chat(prompt, formatted), **kwargs))

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        gen = await self._astream_chat(self._as_chat(prompt, formatted), **kwargs)

        async def agen() -> AsyncIterator[CompletionResponse]:
            async for r in gen:
                yield self._completion(r)

        return agen()

    # ------------------------------------------------------------------ tools
    def _prepare_chat_with_tools(self, tools: Sequence[Any], user_msg: str | ChatMessage | None = None,
                                 chat_history: list[ChatMessage] | None = None, verbose: bool = False,
                                 allow_parallel_tool_calls: bool = False, tool_required: bool = False,
                                 **kwargs: Any) -> dict[str, Any]:
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(user_msg if isinstance(user_msg, ChatMessage)
                            else ChatMessage(role=MessageRole.USER, content=user_msg))
        specs = [t.metadata.to_openai_tool() for t in tools]
        if tool_required:  # FunctionAgent asks for a call: force one (the reply opens a <tool_call>)
            kwargs["tool_choice"] = "required"
        return {"messages": messages, "tools": specs or None, **kwargs}

    def get_tool_calls_from_response(self, response: ChatResponse, error_on_no_tool_call: bool = True,
                                     **kwargs: Any) -> list[ToolSelection]:
        calls = response.message.additional_kwargs.get("tool_calls") or []
        if not calls and error_on_no_tool_call:
            raise ValueError(f"expected at least one tool call, got none; the model said: {response.message.content!r:.200}")
        return [ToolSelection(tool_id=c["id"], tool_name=c["function"]["name"],
                              tool_kwargs=c["function"]["arguments"]) for c in calls]


class _Deltas:
    """Turns RSD events into streamed chat responses (the text of each accepted step), reporting each
    event to LlamaIndex instrumentation on the way."""

    def __init__(self, llm: RSDLLM, span_id: str | None, tools: list[dict[str, Any]] | None, prefix: str = ""):
        self.llm, self.span_id, self.tools = llm, span_id, tools
        self.text, self.filter = "", llm.get_decoder().tool_format.stream_filter() if tools else None
        if self.filter is not None:
            self.filter.feed(prefix)  # a forced tool call's opening: part of the reply, not content

    def on(self, e: Any) -> ChatResponse | None:
        ev = _li_event(e, self.span_id)
        if ev is not None:
            dispatcher.event(ev)
        if isinstance(e, StepEvent) and e.accepted:
            delta = self.filter.feed(e.text) if self.filter else e.text
            self.text += delta
            return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=self.text), delta=delta) \
                if delta else None
        if isinstance(e, RSDResult):
            final = self.llm._response(e, self.tools)
            final.delta = self.filter.finish() if self.filter else ""
            return final
        return None


__all__ = ["RSDLLM", "RSDStepEvent", "RSDTargetInvocationEvent"]
