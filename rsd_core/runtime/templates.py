"""A checkpoint's chat template is untrusted code: render it once, bounded, before the model is used.

transformers renders templates in Jinja's sandbox, which stops attribute tricks but not a template that
loops ``range(99999)`` inside ``range(99999)``, writes ``'x' * 10**9`` or recurses without end. At load
time the template renders a small probe chat in a separate process with a time and memory limit; one
that does not finish, exhausts the limit, recurses or writes far more than a chat needs is a
``ModelLoadError`` naming the checkpoint. A template that raises its own error on the probe (say it
refuses a system turn) is left alone: that is the template's rule, not a bomb. The result is cached per
template text, so loading the same template again costs nothing.

Example:
    >>> check_chat_template("my-model", "{{ messages[0]['content'] }}")
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys

from rsd_core.errors import ModelLoadError

TIME_LIMIT_S = 10.0
MEMORY_LIMIT_BYTES = 2 << 30
MAX_RENDERED_CHARS = 1 << 20  # a four-message probe chat renders to a few hundred characters

_PROBE = r"""
import json, sys
try:
    import resource
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
except (ImportError, ValueError, OSError):  # no rlimits here (Windows): the time limit still holds
    pass
import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
job = json.loads(sys.stdin.read())
def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)
env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False)
env.globals["raise_exception"] = raise_exception
env.globals["strftime_now"] = lambda fmt: "26 Jul 2024"
try:
    out = env.from_string(job["template"]).render(messages=job["messages"], add_generation_prompt=True,
                                                  bos_token="<s>", eos_token="</s>", tools=None)
    print(json.dumps({"chars": len(out)}))
except (RecursionError, MemoryError) as e:
    print(json.dumps({"bomb": type(e).__name__}))
except Exception as e:
    print(json.dumps({"raised": type(e).__name__ + ": " + str(e)[:200]}))
"""

_MESSAGES = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "What is 2 + 2?"},
             {"role": "assistant", "content": "2 + 2 = 4."}, {"role": "user", "content": "And 3 + 3?"}]


def check_chat_template(name: str, template: str | dict[str, str] | list | None) -> None:
    """Render ``template`` (or each of a checkpoint's named templates) on a probe chat, bounded."""
    if not template:
        return
    if isinstance(template, dict):
        for t in template.values():
            check_chat_template(name, t)
        return
    if isinstance(template, list):  # the legacy list-of-{"name", "template"} form
        for t in template:
            check_chat_template(name, t.get("template") if isinstance(t, dict) else t)
        return
    problem = _probe(str(template))
    if problem:
        raise ModelLoadError(f"{name!r}: its chat template {problem}; it is not safe to render (an untrusted "
                             "or damaged tokenizer_config.json / chat_template.jinja)")


@functools.lru_cache(maxsize=64)
def _probe(template: str) -> str | None:
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE, str(MEMORY_LIMIT_BYTES)], capture_output=True,
                              text=True, timeout=TIME_LIMIT_S,
                              input=json.dumps({"template": template, "messages": _MESSAGES}))
    except subprocess.TimeoutExpired:
        return f"did not finish rendering a four-message chat within {TIME_LIMIT_S:g} s"
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return f"crashed the renderer ({done.stderr.strip()[-200:] or 'no output'})"
    if "bomb" in result:
        what = "recursed without end" if result["bomb"] == "RecursionError" else \
            f"needed more than {MEMORY_LIMIT_BYTES >> 30} GiB"
        return f"{what} rendering a four-message chat"
    if result.get("chars", 0) > MAX_RENDERED_CHARS:
        return f"wrote {result['chars']} characters for a four-message chat"
    return None
