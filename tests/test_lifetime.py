"""Lifetime: clients built and dropped per request leave nothing behind; one checkpoint loads once; close()."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

import pytest

from rsd_core import RewardGuidedDecoder
from rsd_core.options import ModelSpec
from rsd_core.toy import toy_model_paths
from rsd_integrations._shared import get_decoder, get_scheduler
from rsd_integrations.langchain import ChatRSD
from rsd_integrations.llama_index import RSDLLM

Q = "Ann has 12 apples. She buys 5 more. She gives away 3. How many apples does Ann have now?"


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _settle(threads0: int, timeout: float = 10.0) -> int:
    end = time.time() + timeout
    while time.time() < end:
        gc.collect()
        if threading.active_count() <= threads0:
            break
        time.sleep(0.05)
    return threading.active_count()


@pytest.mark.slow
@pytest.mark.parametrize("client", ["langchain", "llama_index"])
def test_building_and_dropping_50_wrapped_decoders_returns_memory_and_threads(client):
    def once():
        dec = RewardGuidedDecoder.from_pretrained()
        if client == "langchain":
            ChatRSD(decoder=dec, max_tokens=8).invoke(Q)
        else:
            RSDLLM(decoder=dec, max_tokens=8).complete(Q)

    once()  # warm: first-use allocations are not a leak
    threads0 = _settle(threading.active_count())
    rss0 = _rss_mb()
    for _ in range(50):
        once()
    threads = _settle(threads0)
    grew = _rss_mb() - rss0
    print(f"{client}: threads {threads0} -> {threads}, RSS +{grew:.0f} MB over 50 decoders")
    assert threads <= threads0
    assert grew < 50


def test_a_dropped_decoder_takes_its_scheduler_thread_with_it():
    threads0 = threading.active_count()
    dec = RewardGuidedDecoder.from_pretrained()
    ChatRSD(decoder=dec, max_tokens=4).invoke(Q)
    assert threading.active_count() == threads0 + 1  # its batching thread
    del dec
    assert _settle(threads0) == threads0


def test_close_stops_the_thread_and_the_decoder_refuses_further_runs():
    threads0 = threading.active_count()
    with ChatRSD(decoder=RewardGuidedDecoder.from_pretrained(), max_tokens=4) as llm:
        llm.invoke(Q)
        dec = llm.get_decoder()
    assert dec.closed and _settle(threads0) == threads0
    with pytest.raises(RuntimeError, match="closed"):
        dec.generate([Q])
    with pytest.raises(RuntimeError, match="closed"):
        get_scheduler(dec)


def test_the_same_checkpoint_named_four_ways_loads_once():
    paths = toy_model_paths()
    target = Path(paths["target"])
    names = [str(target), f"{target}/", f"{target}/.", str(target.parent / ".." / target.parent.name / target.name)]
    assert len({id(get_decoder(ModelSpec(n, paths["draft"], paths["prm"]))) for n in names}) == 1
    # draft and target named differently but the same folder: one model in memory
    dec = RewardGuidedDecoder.from_pretrained(paths["draft"], paths["draft"] + "/", paths["prm"])
    assert dec.target.model is dec.draft.model


def test_at_exit_every_scheduler_thread_finishes_its_run_before_the_interpreter_goes():
    """A caller has its answer while the scheduler thread still closes the run; at exit the thread is
    stopped and joined (a daemon thread left inside torch aborted the process after its output)."""
    import subprocess
    import sys

    code = ("from rsd_integrations.langchain import ChatRSD\n"
            "import rsd_integrations._shared as s\n"
            "print(ChatRSD(max_tokens=16).invoke('Ann has 3 pens. She buys 2 more. She loses 1. How many pens now?')"
            ".content != '')\n"
            "threads = [x._thread for x in s._LIVE]\n"
            "s._stop_schedulers_at_exit()\n"
            "print(len(threads), sum(t.is_alive() for t in threads))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["True", "1", "0"]
