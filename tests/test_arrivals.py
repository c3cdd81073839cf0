"""Prompts that arrive while a batch runs join it as it goes (``generate(arrivals=...)``), and through
``ChatRSD`` a request arriving during another's run joins that run instead of waiting for it to end."""

from __future__ import annotations

import threading

import pytest

from rsd_core import RewardGuidedDecoder
from rsd_core.eval.datasets import toy_examples
from rsd_integrations.langchain import ChatRSD

QUESTIONS = [e.question for e in toy_examples(6, seed=77)]


class _After:
    """Hands over ``prompts`` once ``k`` steps have been reported."""

    def __init__(self, prompts, k):
        self.prompts, self.k, self.steps, self.joined_at = list(prompts), k, 0, None

    def on_step(self, event):
        self.steps += 1

    def waiting(self):
        return bool(self.prompts) and self.steps >= self.k

    def take(self):
        out, self.prompts, self.joined_at = self.prompts, [], self.steps
        return out


class _Seen:
    def __init__(self):
        self.order, self.errors = [], {}

    def on_step(self, event):
        self.order.append(("step", event.sequence_index))

    def on_end(self, result):
        self.order.append(("end", result.index))

    def on_error(self, event):
        self.errors[event.sequence_index] = event.error


@pytest.mark.parametrize("update", [{}, {"scheduler": "lockstep"}, {"threshold": 1.0}, {"threshold": 0.0}])
def test_prompts_that_arrive_join_the_running_batch(toy, update):
    cfg = toy.config.model_copy(update={"max_new_tokens": 64, **update})
    first, later = QUESTIONS[:3], QUESTIONS[3:5]
    solo = [toy.generate(q, config=cfg)[0] for q in first + later]
    arrivals, seen = _After(later, k=4), _Seen()
    results = toy.generate(first, config=cfg, callbacks=[arrivals, seen], arrivals=arrivals)
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    assert [r.text for r in results] == [r.text for r in solo]  # the same answers as alone (greedy)
    assert arrivals.joined_at is not None
    # they joined while the first prompts were still being written, not after
    first_joined_step = seen.order.index(next(e for e in seen.order if e[1] >= 3))
    last_first_end = max(i for i, e in enumerate(seen.order) if e[0] == "end" and e[1] < 3)
    assert first_joined_step < last_first_end
    assert not toy.draft.cached.states and not toy.target.cached.states


def test_a_bad_prompt_that_arrives_fails_alone(toy):
    arrivals, seen = _After([[{"role": "wizard", "content": "hi"}], QUESTIONS[4]], k=2), _Seen()
    results = toy.generate(QUESTIONS[:2], callbacks=[arrivals, seen], arrivals=arrivals)
    assert list(seen.errors) == [2] and "role" in str(seen.errors[2])
    assert [r.index for r in results] == [0, 1, 3]
    assert results[-1].text == toy.generate(QUESTIONS[4])[0].text


def test_a_chatrsd_request_arriving_mid_run_joins_it(toy, monkeypatch):
    from rsd_integrations import _shared

    dec = RewardGuidedDecoder(toy.draft, toy.target, toy.reward, toy.config)
    llm = ChatRSD(decoder=dec, max_tokens=200)
    solo = llm.invoke(QUESTIONS[5]).content
    joined: list = []
    real_take = _shared._Arrivals.take

    def take(self):
        out = real_take(self)
        joined.extend(out)
        return out

    monkeypatch.setattr(_shared._Arrivals, "take", take)
    started = threading.Event()
    orig_start = toy.draft.start

    def start(seq, ids):
        started.set()
        return orig_start(seq, ids)

    monkeypatch.setattr(toy.draft, "start", start)
    out: dict = {}
    worker = threading.Thread(target=lambda: out.setdefault("batch", llm.batch(QUESTIONS[:5])))
    worker.start()
    assert started.wait(30)
    got = llm.invoke(QUESTIONS[5]).content
    worker.join(60)
    assert got == solo
    assert any(QUESTIONS[5] in str(p) for p in joined)  # it joined the run that was going, not a new one
    assert len(out["batch"]) == 5
