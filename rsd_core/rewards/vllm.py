"""A PRM served by vLLM: the family's own format (``rewards/format.py``), scored by a server.

- ``step_tag`` PRMs (token classifiers: Qwen2.5-Math-PRM, ``*ForTokenClassification``), served
  with ``--runner pooling``: ``POST /pooling`` with ``"task": "token_classify"``; the reward is the
  class-1 probability at the newest step tag;
- ``likelihood`` PRMs (a causal LM, the toy PRM): ``prompt_logprobs`` of the step's tokens.

The ids are built by the same format object the local scorer uses, so a served PRM scores exactly
the ids the same checkpoint scores when loaded here.

Example:
    >>> rm = VLLMRewardModel({"url": "http://127.0.0.1:8003", "model": "Qwen/Qwen2.5-Math-PRM-7B"})  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from rsd_core.accounting import ModelUsage
from rsd_core.errors import BackendError, UnknownRewardModelError
from rsd_core.rewards.base import Conversation, RewardModel
from rsd_core.rewards.likelihood import LikelihoodFormat
from rsd_core.rewards.step_tag import StepTagFormat
from rsd_core.runtime.checkpoints import read_config
from rsd_core.runtime.served import (
    RemoteSeq,
    SequenceBook,
    ServedModel,
    VLLMClient,
    as_served,
    flop_counter,
    load_tokenizer,
)

SERVED_REWARD_FAMILIES = ("step_tag", "likelihood")


class VLLMRewardModel(RewardModel):
    """A PRM served by vLLM. ``step_tag`` PRMs through ``/pooling`` (``token_classify``; serve with
    ``--runner pooling``), ``likelihood`` PRMs through ``/v1/completions`` prompt log-probs.
    """

    def __init__(self, served: ServedModel | dict[str, Any], *, reward_type: str | None = None, pool: int = 16,
                 **family_kwargs: Any):
        from rsd_core.rewards.detect import detect_reward_type

        self.served = as_served(served)
        self.client = VLLMClient(self.served, pool)
        self.client.check_model()
        source = self.served.tokenizer or self.served.model
        self.tokenizer = load_tokenizer(source)
        self.name = self.served.model
        self.kind = reward_type or detect_reward_type(source)
        declared = dict(read_config(source).get("rsd_reward") or {})
        declared.pop("type", None)
        if self.kind == "step_tag":
            kw = {k: v for k, v in declared.items() if k in ("step_tag", "system_prompt")} | family_kwargs
            self.tag_format: StepTagFormat | None = StepTagFormat(self.tokenizer, **kw)
            self.likelihood_format: LikelihoodFormat | None = None
        elif self.kind == "likelihood":
            kw = {k: v for k, v in declared.items() if k == "aggregate"} | family_kwargs
            self.tag_format, self.likelihood_format = None, LikelihoodFormat(self.tokenizer, **kw)
        else:
            raise UnknownRewardModelError(f"reward family {self.kind!r} cannot be served through vLLM here; served "
                                          f"families: {', '.join(SERVED_REWARD_FAMILIES)}")
        self._book = SequenceBook(flop_counter(source))
        self._conv: dict[int, Conversation] = {}
        self._steps: dict[int, list[str]] = {}
        self._lens: dict[int, list[int]] = {}
        self._pool = ThreadPoolExecutor(max_workers=pool, thread_name_prefix="rsd-vllm-prm")
        self._lock = threading.Lock()

    def start(self, seq: int, conversation: Conversation) -> None:
        fmt = self.tag_format or self.likelihood_format
        assert fmt is not None
        ids = fmt.header_ids(conversation)
        with self._lock:
            self._book.states[seq] = RemoteSeq(list(ids))
            self._conv[seq], self._steps[seq], self._lens[seq] = conversation, [], []

    def score(self, seqs: list[int], steps: list[str]) -> list[float]:
        if len(seqs) <= 1:
            return [self._score(s, t) for s, t in zip(seqs, steps)]
        futures = [self._pool.submit(self._score, s, t) for s, t in zip(seqs, steps)]
        errors = [f.exception() for f in futures]  # waits for every request
        if any(errors):  # all or nothing: the sequences that were scored take their step back
            self.rollback([s for s, e in zip(seqs, errors) if e is None])
            raise next(e for e in errors if e is not None)
        return [f.result() for f in futures]

    def _score(self, seq: int, step: str) -> float:
        st = self._book.states[seq]
        if self.tag_format is not None:
            new = self.tag_format.step_ids(self._conv[seq], self._steps[seq], step)
            reward = self._tag_reward(st.ids + new)
        else:
            assert self.likelihood_format is not None
            new = self.likelihood_format.step_ids(step)
            reward = self._likelihood_reward(st.ids + new, new)
        st.ids = st.ids + new
        self._book.count(st, 0, scored=len(new))
        self._steps[seq].append(step)
        self._lens[seq].append(len(new))
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
        assert self.likelihood_format is not None
        data = self.client.post("/v1/completions", {"prompt": ids, "max_tokens": 1, "temperature": 0.0,
                                                    "prompt_logprobs": 0})
        try:
            rows = data["choices"][0]["prompt_logprobs"][-len(new):] if new else []
            logps = [row[str(tok)]["logprob"] for row, tok in zip(rows, new)]
        except (KeyError, IndexError, TypeError):
            raise BackendError(f"{self.name}: unexpected prompt_logprobs in {str(data)[:200]}") from None
        return self.likelihood_format.reward(torch.tensor(logps, dtype=torch.float32))

    def rollback(self, seqs: list[int]) -> None:
        for s in seqs:
            self._book.rollback(self._book.states[s], self._lens[s].pop())
            self._steps[s].pop()

    def release(self, seqs: list[int]) -> None:
        with self._lock:
            for s in seqs:
                self._book.states.pop(s, None)
                for d in (self._conv, self._steps, self._lens):
                    d.pop(s, None)  # type: ignore[attr-defined]

    def usage(self, seq: int) -> ModelUsage:
        return self._book.states[seq].usage

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
