"""Run a doc page's Python blocks as a reader would: in order, in one session, top-level ``await`` allowed.

    python tests/doc_blocks.py docs/langchain.md      # prints "block N ok" per block, fails on the first error

Blocks that talk to vLLM servers on other machines (``http://gpu-...``) are listed as skipped: they need
those servers (``tests/test_vllm_backend.py`` runs the same calls against real local ones).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import sys
import textwrap
from pathlib import Path

NEEDS_SERVERS = "http://gpu-"


def python_blocks(page: Path) -> list[str]:
    """The page's ```python blocks, dedented (blocks inside list items are indented in the Markdown)."""
    found = re.finditer(r"^[ \t]*```python\n(.*?)^[ \t]*```", page.read_text(), flags=re.S | re.M)
    return [textwrap.dedent(m.group(1)) for m in found]


def run_page(page: Path) -> None:
    session: dict = {"__name__": "__main__"}
    for i, block in enumerate(python_blocks(page)):
        if NEEDS_SERVERS in block:
            print(f"block {i} skipped (needs vLLM servers)", flush=True)
            continue
        code = compile(block, f"{page}:block{i}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        if code.co_flags & inspect.CO_COROUTINE:
            asyncio.run(eval(code, session))
        else:
            exec(code, session)
        print(f"block {i} ok", flush=True)


if __name__ == "__main__":
    run_page(Path(sys.argv[1]))
