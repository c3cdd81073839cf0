"""Standard LangChain tests the embedded toy models cannot pass, and why.

The toy trio was trained on arithmetic word problems only: it never learned to call tools or to answer in
a JSON schema, so the standard tests of those capabilities are expected to fail on it (xfail, not skip:
they still run). ChatRSD's tool-call plumbing itself is tested in test_langchain_events.py.
"""

from __future__ import annotations

import pytest

TOY_CANNOT = "the toy models know only arithmetic word problems; they were never taught to call tools or emit JSON"
NEEDS_TOOL_USE = {
    "test_tool_calling", "test_tool_calling_async", "test_bind_runnables_as_tools",
    "test_tool_calling_with_no_arguments", "test_structured_output", "test_structured_output_async",
    "test_structured_output_pydantic_2_v1", "test_structured_output_optional_param", "test_agent_loop",
    "test_unicode_tool_call_integration",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.cls is not None and item.cls.__name__ == "TestChatRSDIntegration" \
                and getattr(item, "originalname", item.name) in NEEDS_TOOL_USE:
            item.add_marker(pytest.mark.xfail(reason=TOY_CANNOT, strict=False))
