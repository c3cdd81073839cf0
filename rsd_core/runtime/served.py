"""The HTTP side of served models (vLLM's OpenAI-compatible server): where a model is served, a client
with timeouts and retries, and the per-sequence token book both the served generator
(``backends/vllm.py``) and the served PRM (``rewards/vllm.py``) keep.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rsd_core.accounting import FlopCounter
from rsd_core.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    ModelLoadError,
    ModelMismatchError,
)
from rsd_core.runtime.ledger import Ledger


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


def as_served(x: ServedModel | dict[str, Any]) -> ServedModel:
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


def load_tokenizer(name_or_path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load the tokenizer {name_or_path!r} for a served model: {e} "
                             "(pass ServedModel(tokenizer=...) with a hub id or a local path)") from e


def flop_counter(name_or_path: str) -> FlopCounter | None:
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


RemoteSeq = Ledger  # n_cached: the leading ids the server has read (its prefix cache holds them)


class SequenceBook:
    """Token ids and usage per sequence, counted as the transformers backend counts them."""

    def __init__(self, flops: FlopCounter | None):
        self.flops = flops
        self.states: dict[int, RemoteSeq] = {}

    def count(self, s: RemoteSeq, generated: int, scored: int = 0) -> None:
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
    def rollback(s: RemoteSeq, n: int) -> None:
        s.drop_tail(n)
