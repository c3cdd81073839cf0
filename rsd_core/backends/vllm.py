"""RSD over vLLM servers: draft and target through ``/v1/completions``, the PRM through ``/pooling``.

Each model is named by the URL of its OpenAI-compatible vLLM server and the model name it serves
(one server may serve several). The client keeps each sequence's token ids and sends them as the
prompt (ids, never text), so nothing is re-tokenized; vLLM's prefix caching makes resending the
prefix cheap. A draft or target step is one completion that stops at the step delimiter
(``include_stop_str_in_output``, ``return_token_ids``); sampling settings and a per-step seed pass
through. A served PRM is ``rewards/vllm.py``'s ``VLLMRewardModel``; the HTTP client both use is
``runtime/served.py``.

Every request has a timeout; connection failures (server down, connection dropped, 502/503/504)
are retried with exponential backoff, then raise ``BackendUnavailableError``; a server that serves
another model raises ``ModelMismatchError`` when the backend is built.

Example:
    >>> dec = RewardGuidedDecoder.from_vllm(                                    # doctest: +SKIP
    ...     draft=ServedModel(url="http://gpu1:8000", model="Qwen/Qwen2.5-Math-1.5B-Instruct"),
    ...     target=ServedModel(url="http://gpu2:8000", model="Qwen/Qwen2.5-Math-72B-Instruct"),
    ...     reward=ServedModel(url="http://gpu3:8000", model="Qwen/Qwen2.5-Math-PRM-7B"))
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rsd_core.accounting import ModelUsage
from rsd_core.backends.base import Step
from rsd_core.backends.rendering import ChatPrompts
from rsd_core.config import SamplingConfig
from rsd_core.errors import BackendError
from rsd_core.runtime.served import (
    RemoteSeq,
    SequenceBook,
    ServedModel,
    VLLMClient,
    as_served,
    flop_counter,
    load_tokenizer,
)
from rsd_core.sampling import stream_key

__all__ = ["ServedModel", "VLLMClient", "VLLMGenerator"]


class VLLMGenerator(ChatPrompts):
    """A model served by vLLM behind the generator contract (see ``backends.base.Generator``).

    Args:
        served: where the model is served (a ``ServedModel`` or a dict of its fields).
        sampling: how it samples (the decoder sets this for each run).
        pool: the most requests in flight to this server at once.
    """

    def __init__(self, served: ServedModel | dict[str, Any], *, sampling: SamplingConfig | None = None,
                 step_delimiters: list[str] | None = None, pool: int = 16, tokenizer: Any = None):
        self.served = as_served(served)
        self.client = VLLMClient(self.served, pool)
        info = self.client.check_model()
        source = self.served.tokenizer or self.served.model
        self.tokenizer = tokenizer or load_tokenizer(source)
        self.name = self.served.model
        self.context_length = int(info.get("max_model_len") or getattr(self.tokenizer, "model_max_length", None) or 4096)
        self.sampling = sampling or SamplingConfig()
        self._delimiters = list(step_delimiters or ["\n\n"])
        self._book = SequenceBook(flop_counter(source))
        self._pool = ThreadPoolExecutor(max_workers=pool, thread_name_prefix="rsd-vllm")
        self._seed: int | None = None
        self._lock = threading.Lock()

    # settings ---------------------------------------------------------------
    def set_step_delimiters(self, delimiters: list[str]) -> None:
        self._delimiters = list(delimiters)

    def reseed(self, seed: int | None) -> None:
        self._seed = seed

    def set_stream(self, seq: int, key: int) -> None:
        """The sequence's own random stream: each sampled step asks the server for a seed drawn from it."""
        st = self._book.states[seq]
        st.stream, st.draws = key, 0

    # sequences --------------------------------------------------------------
    def start(self, seq: int, prompt_ids: list[int]) -> None:
        with self._lock:
            self._book.states[seq] = RemoteSeq(list(prompt_ids))

    def extend(self, seqs: list[int], token_ids: list[list[int]]) -> None:
        for s, ids in zip(seqs, token_ids):
            self._book.states[s].ids.extend(ids)

    def rollback(self, seqs: list[int], n_tokens: list[int]) -> None:
        for s, n in zip(seqs, n_tokens):
            self._book.rollback(self._book.states[s], n)

    def release(self, seqs: list[int]) -> None:
        with self._lock:
            for s in seqs:
                self._book.states.pop(s, None)

    def usage(self, seq: int) -> ModelUsage:
        return self._book.states[seq].usage

    def num_tokens(self, seq: int) -> int:
        return len(self._book.states[seq].ids)

    # generation -------------------------------------------------------------
    def generate_step(self, seqs: list[int], budgets: list[int], constraints: Any = None) -> list[Step]:
        # ``constraints`` (a grammar for the reply) are not applied: the server writes unconstrained.
        if len(seqs) <= 1:
            return [self._step(s, b) for s, b in zip(seqs, budgets)]
        return list(self._pool.map(self._step, seqs, budgets))  # each sequence its own request

    def _step(self, seq: int, budget: int) -> Step:
        st = self._book.states[seq]
        budget = max(1, min(budget, self.context_length - len(st.ids)))
        sp = self.sampling
        body: dict[str, Any] = {
            "prompt": st.ids, "max_tokens": budget, "stop": self._delimiters, "include_stop_str_in_output": True,
            "return_token_ids": True, "skip_special_tokens": True, "temperature": sp.temperature, "top_p": sp.top_p,
        }
        if sp.top_k:
            body["top_k"] = sp.top_k
        if st.stream and not sp.greedy:  # the sequence's own stream: the same whatever runs beside it
            body["seed"] = stream_key(st.stream, st.draws) % 2**31
            st.draws += 1
        elif self._seed is not None and not sp.greedy:
            body["seed"] = (self._seed * 1_000_003 + seq * 7919 + st.usage.calls) % 2**31  # per sequence and step
        data = self.client.post("/v1/completions", body)
        try:
            choice = data["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise BackendError(f"{self.name}: unexpected completion response {str(data)[:200]}") from None
        tokens = choice.get("token_ids")
        if tokens is None:
            raise BackendError(f"{self.name}: the server returned no token ids (needs vLLM >= 0.10.2 for "
                               "return_token_ids)")
        finish, reason = choice.get("finish_reason"), choice.get("stop_reason")
        eos = finish == "stop" and (reason is None or isinstance(reason, int))
        delimited = finish == "stop" and isinstance(reason, str)
        self._book.count(st, len(tokens))
        st.ids.extend(tokens)
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return Step(list(tokens), text, eos, delimited)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
