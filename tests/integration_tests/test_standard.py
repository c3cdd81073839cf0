"""LangChain's standard integration suite for ChatRSD, on the embedded toy trio (real generation).

The toy models were trained on arithmetic word problems only. Where a standard test needs a general
instruct model (calling tools, following a JSON schema), conftest.py marks it xfail with that reason.
"""

from __future__ import annotations

from langchain_tests.integration_tests import ChatModelIntegrationTests

from rsd_integrations.langchain import ChatRSD


class TestChatRSDIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatRSD]:
        return ChatRSD

    @property
    def chat_model_params(self) -> dict:
        return {"max_tokens": 60}

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return False
