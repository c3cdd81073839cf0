"""RSD over vLLM servers: draft and target through ``/v1/completions``, the PRM through ``/pooling``.

Each model is named by the URL of its OpenAI-compatible vLLM server and the model name it serves
(one server may serve several). The client keeps each sequence's token ids and sends them as the
prompt (ids, never text), so nothing is re-tokenized; vLLM's prefix caching makes resending the
prefix cheap. A draft or target step is one completion that stops at the step delimiter
(``include_stop_str_in_output``, ``return_token_ids``); sampling settings and a per-step seed pass
through. The PRM scores with one request per step:

- ``step_tag`` PRMs (token classifiers: Qwen2.5-Math-PRM, ``*ForTokenClassification``), served
  with ``--runner pooling``: ``POST /pooling`` with ``"task": "token_classify"``; the reward is the
  class-1 probability at the newest step tag;
- ``likelihood`` PRMs (a causal LM, the toy PRM): ``prompt_logprobs`` of the step's tokens.

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
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rsd_core.accounting import FlopCounter
from rsd_core.backends.base import Prompt, Step
from rsd_core.backends.fast import drop_tail
from rsd_core.backends.hf import render_prompt
from rsd_core.config import SamplingConfig
from rsd_core.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ModelLoadError,
    ModelMismatchError,
    UnknownRewardModelError,
)
from rsd_core.events import ModelUsage
from rsd_core.rewards.base import Conversation, RewardModel


class ServedModel(BaseModel):
    """Where one model is served.

    Attributes:
        url: the server's base URL (``http://host:port``; a trailing ``/v1`` is accepted).
        model: the model name the server serves (``--served-model-name``, else its ``--model``).
        tokenizer: id or local path of the model's tokenizer (default: ``model``); the client needs
            it to render chat templates and decode steps.
        api_key: sent as a bearer token (vLLM's ``--api-key``).
        timeout_s: the longest one request may take.
        max_retries: retries after a connection failure, with exponential backoff from ``backoff_s``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    model: str = Field(min_length=1)
    tokenizer: str | None = None
    api_key: str | None = None
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(3, ge=0, le=20)
    backoff_s: float = Field(0.25, ge=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {v!r}")
        return v[: -len("/v1")] if v.endswith("/v1") else v


def _served(x: ServedModel | dict[str, Any]) -> ServedModel:
    return x if isinstance(x, ServedModel) else ServedModel(**x)


class VLLMClient:
    """HTTP to one vLLM server for one model: timeouts, retries with backoff, clear errors."""

    _RETRY_STATUS = (502, 503, 504)

    def __init__(self, served: ServedModel, pool: int = 16):
        self.served = served
        headers = {"Authorization": f"Bearer {served.api_key}"} if served.api_key else {}
        self._http = httpx.Client(base_url=served.url, headers=headers, timeout=served.timeout_s,
                                  limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool))

    def _where(self) -> str:
        return f"the vLLM server for {self.served.model!r} at {self.served.url}"

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        s = self.served
        last: Exception | None = None
        for attempt in range(s.max_retries + 1):
            if attempt:
                time.sleep(s.backoff_s * 2 ** (attempt - 1))
            try:
                r = self._http.request(method, path, json=body)
            except httpx.TimeoutException as e:
                if isinstance(e, httpx.ConnectTimeout):
                    last = e
                    continue
                raise BackendTimeoutError(f"{self._where()} did not answer {path} within {s.timeout_s:g} s "
                                          "(raise ServedModel.timeout_s for long steps)") from e
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:
                last = e  # down, restarting, or dropped the connection: try again
                continue
            if r.status_code in self._RETRY_STATUS:
                last = BackendError(f"HTTP {r.status_code}")
                continue
            if r.status_code == 404 and "model" in r.text.lower():
                raise ModelMismatchError(f"{self._where()} does not serve that model: {self._message(r)}")
            if r.status_code >= 400:
                raise BackendError(f"{self._where()} refused {path} (HTTP {r.status_code}): {self._message(r)}")
            try:
                return r.json()
            except ValueError as e:
                raise BackendError(f"{self._where()} answered {path} with something that is not JSON") from e
        tries = s.max_retries + 1
        raise BackendUnavailableError(f"cannot reach {self._where()} after {tries} tr{'y' if tries == 1 else 'ies'} "
                                      f"({type(last).__name__}: {last}); is it running?") from last

    @staticmethod
    def _message(r: httpx.Response) -> str:
        try:
            err = r.json()
            err = err.get("error", err) if isinstance(err, dict) else err
            return str(err.get("message", err) if isinstance(err, dict) else err)[:500]
        except ValueError:
            return r.text[:500]

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, {"model": self.served.model, **body})

    def check_model(self) -> dict[str, Any]:
        """The server's entry for our model (``max_model_len`` and so on), or ``ModelMismatchError``."""
        data = self.request("GET", "/v1/models")
        entries = data.get("data", []) if isinstance(data, dict) else []
        for e in entries:
            if e.get("id") == self.served.model:
                return e
        served = [e.get("id") for e in entries]
        raise ModelMismatchError(f"{self._where()} serves {served}, not {self.served.model!r}: check the model "
                                 "name (vLLM's --served-model-name) and the URL")

    def close(self) -> None:
        self._http.close()


def _tokenizer(name_or_path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load the tokenizer {name_or_path!r} for a served model: {e} "
                             "(pass ServedModel(tokenizer=...) with a hub id or a local path)") from e


def _flop_counter(name_or_path: str) -> FlopCounter | None:
    """FLOPs per forward from the model's config alone (the weights live on the server)."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification

        cfg = AutoConfig.from_pretrained(name_or_path)
        archs = getattr(cfg, "architectures", None) or []
        auto = AutoModelForTokenClassification if any("TokenClassification" in a for a in archs) else AutoModelForCausalLM
        with torch.device("meta"):
            model = auto.from_config(cfg)
        return FlopCounter.for_model(model)
    except Exception:  # an architecture transformers does not know: tokens are still counted
        return None


@dataclass
class _RemoteSeq:
    ids: list[int]
    n_cached: int = 0  # leading ids the server has read for this sequence (its prefix cache holds them)
    own_unfed: int = 0  # the newest token, written by this model and not read yet (not prefill)
    calls: int = 0
    usage: ModelUsage = field(default_factory=ModelUsage)


class _SequenceBook:
    """Token ids and usage per sequence, counted as the transformers backend counts them."""

    def __init__(self, flops: FlopCounter | None):
        self.flops = flops
        self.states: dict[int, _RemoteSeq] = {}

    def count(self, s: _RemoteSeq, generated: int, scored: int = 0) -> None:
        """One request over all of ``s.ids``: the server reads what it has not read, then writes ``generated``."""
        read = len(s.ids) - s.n_cached
        s.usage.calls += 1
        s.usage.prefill_tokens += read - s.own_unfed
        s.usage.decode_tokens += generated
        if self.flops is not None:
            fed = max(0, generated - 1)  # the last token written is read next time
            s.usage.flops += self.flops.forward(read, s.n_cached) + self.flops.forward(fed, len(s.ids))
            s.usage.paper_flops += self.flops.weights(generated + scored)
        s.n_cached = len(s.ids) + max(0, generated - 1)
        s.own_unfed = 1 if generated else 0

    @staticmethod
    def rollback(s: _RemoteSeq, n: int) -> None:
        drop_tail(s, n)
        s.n_cached = min(s.n_cached, len(s.ids))


class VLLMGenerator:
    """A model served by vLLM behind the generator contract (see ``backends.base.Generator``).

    Args:
        served: where the model is served (a ``ServedModel`` or a dict of its fields).
        sampling: how it samples (the decoder sets this for each run).
        pool: the most requests in flight to this server at once.
    """

    def __init__(self, served: ServedModel | dict[str, Any], *, sampling: SamplingConfig | None = None,
                 step_delimiters: list[str] | None = None, pool: int = 16, tokenizer: Any = None):
        self.served = _served(served)
        self.client = VLLMClient(self.served, pool)
        info = self.client.check_model()
        source = self.served.tokenizer or self.served.model
        self.tokenizer = tokenizer or _tokenizer(source)
        self.name = self.served.model
        self.context_length = int(info.get("max_model_len") or getattr(self.tokenizer, "model_max_length", None) or 4096)
        self.sampling = sampling or SamplingConfig()
        self._delimiters = list(step_delimiters or ["\n\n"])
        self._book = _SequenceBook(_flop_counter(source))
        self._pool = ThreadPoolExecutor(max_workers=pool, thread_name_prefix="rsd-vllm")
        self._seed: int | None = None
        self._lock = threading.Lock()

    # settings ---------------------------------------------------------------
    def set_step_delimiters(self, delimiters: list[str]) -> None:
        self._delimiters = list(delimiters)

    def reseed(self, seed: int | None) -> None:
        self._seed = seed

    def render_prompt(self, prompt: Prompt, tools: list[dict[str, Any]] | None = None,
                      reply_prefix: str = "") -> list[int]:
        return render_prompt(self.tokenizer, prompt, tools, self.name, self.context_length, reply_prefix)

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    # sequences --------------------------------------------------------------
    def start(self, seq: int, prompt_ids: list[int]) -> None:
        with self._lock:
            self._book.states[seq] = _RemoteSeq(list(prompt_ids))

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
        if self._seed is not None and not sp.greedy:
            body["seed"] = (self._seed * 1_000_003 + seq * 7919 + st.calls) % 2**31  # per sequence and step
        st.calls += 1
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


# ----------------------------------------------------------------------------------------- the PRM

SERVED_REWARD_FAMILIES = ("step_tag", "likelihood")


class VLLMRewardModel(RewardModel):
    """A PRM served by vLLM. ``step_tag`` PRMs through ``/pooling`` (``token_classify``; serve with
    ``--runner pooling``), ``likelihood`` PRMs through ``/v1/completions`` prompt log-probs.

    The input layout (chat header, step tags) is the family's own, from ``rsd_core.rewards``, so a
    served PRM scores exactly as the same checkpoint loaded locally.
    """

    def __init__(self, served: ServedModel | dict[str, Any], *, reward_type: str | None = None, pool: int = 16,
                 **family_kwargs: Any):
        from rsd_core.rewards import _read_config, detect_reward_type
        from rsd_core.rewards.likelihood import LikelihoodPRM
        from rsd_core.rewards.step_tag import StepTagPRM

        self.served = _served(served)
        self.client = VLLMClient(self.served, pool)
        self.client.check_model()
        source = self.served.tokenizer or self.served.model
        self.tokenizer = _tokenizer(source)
        self.name = self.served.model
        self.kind = reward_type or detect_reward_type(source)
        declared = dict(_read_config(source).get("rsd_reward") or {})
        declared.pop("type", None)
        if self.kind == "step_tag":
            kw = {k: v for k, v in declared.items() if k in ("step_tag", "system_prompt")} | family_kwargs
            self.layout: Any = StepTagPRM(None, self.tokenizer, name=self.name, **kw)
        elif self.kind == "likelihood":
            kw = {k: v for k, v in declared.items() if k == "aggregate"} | family_kwargs
            self.layout = LikelihoodPRM(None, self.tokenizer, name=self.name, **kw)
        else:
            raise UnknownRewardModelError(f"reward family {self.kind!r} cannot be served through vLLM here; served "
                                          f"families: {', '.join(SERVED_REWARD_FAMILIES)}")
        self._book = _SequenceBook(_flop_counter(source))
        self._steps: dict[int, list[int]] = {}
        self._pool = ThreadPoolExecutor(max_workers=pool, thread_name_prefix="rsd-vllm-prm")
        self._lock = threading.Lock()

    def start(self, seq: int, conversation: Conversation) -> None:
        ids = self.layout.header_ids(conversation)
        with self._lock:
            self._book.states[seq] = _RemoteSeq(list(ids))
            self._steps[seq] = []

    def score(self, seqs: list[int], steps: list[str]) -> list[float]:
        if len(seqs) <= 1:
            return [self._score(s, t) for s, t in zip(seqs, steps)]
        return list(self._pool.map(self._score, seqs, steps))

    def _score(self, seq: int, step: str) -> float:
        st = self._book.states[seq]
        if self.kind == "step_tag":
            new = self.layout.step_ids(step, len(self._steps[seq]))
            reward = self._tag_reward(st.ids + new)
        else:
            new = self.layout.step_ids(step)
            reward = self._likelihood_reward(st.ids + new, new)
        st.ids = st.ids + new
        self._book.count(st, 0, scored=len(new))
        self._steps[seq].append(len(new))
        return min(1.0, max(0.0, reward))

    def _tag_reward(self, ids: list[int]) -> float:
        """Class-1 probability at the last position (the newest step tag), from ``/pooling``."""
        data = self.client.request("POST", "/pooling", {"model": self.name, "input": ids, "task": "token_classify"})
        try:
            probs = data["data"][0]["data"][-1]
        except (KeyError, IndexError, TypeError):
            raise BackendError(f"{self.name}: unexpected /pooling response {str(data)[:200]} (is the PRM "
                               "served with --runner pooling?)") from None
        return float(probs[1] if len(probs) > 1 else probs[0])

    def _likelihood_reward(self, ids: list[int], new: list[int]) -> float:
        """The family's own aggregate over the step tokens' prompt log-probs."""
        data = self.client.post("/v1/completions", {"prompt": ids, "max_tokens": 1, "temperature": 0.0,
                                                    "prompt_logprobs": 0})
        try:
            rows = data["choices"][0]["prompt_logprobs"][-len(new):] if new else []
            logps = [row[str(tok)]["logprob"] for row, tok in zip(rows, new)]
        except (KeyError, IndexError, TypeError):
            raise BackendError(f"{self.name}: unexpected prompt_logprobs in {str(data)[:200]}") from None
        return self.layout._reward(torch.tensor(logps, dtype=torch.float32))

    def rollback(self, seqs: list[int]) -> None:
        for s in seqs:
            self._book.rollback(self._book.states[s], self._steps[s].pop())

    def release(self, seqs: list[int]) -> None:
        with self._lock:
            for s in seqs:
                self._book.states.pop(s, None)
                self._steps.pop(s, None)

    def usage(self, seq: int) -> ModelUsage:
        return self._book.states[seq].usage

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

