"""Standard LangChain tests the embedded toy models cannot pass, and why.

The toy target was taught tool calling on random tools (rsd_core/toy/tool_use.py) and passes the
standard tool-calling, tool-choice, structured-output and agent-loop tests. One remains beyond it:
copying an unseen string of CJK characters byte for byte into an argument (it writes other CJK
characters: a 0.8M-parameter model with a 419-token byte-level vocabulary). The same standard test
runs for real, and passes, on SmolLM2-135M-Instruct in test_real_model.py (slow; CI runs it), and
ChatRSD's handling of Unicode arguments is also tested on fixed model output in test_langchain_events.py.
"""

from __future__ import annotations

import pytest

TOY_CANNOT = {
    "test_unicode_tool_call_integration": "the toy target cannot copy an unseen CJK string byte for byte into a tool "
                                          "argument (it writes other CJK characters); the same test passes on "
                                          "SmolLM2-135M-Instruct in test_real_model.py",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        reason = TOY_CANNOT.get(getattr(item, "originalname", item.name))
        if item.cls is not None and item.cls.__name__ == "TestChatRSDIntegration" and reason:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=False))
