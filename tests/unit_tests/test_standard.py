"""LangChain's standard unit suite for ChatRSD (no model is loaded: building a ChatRSD is instant)."""

from __future__ import annotations

from langchain_tests.unit_tests import ChatModelUnitTests

from rsd_integrations.langchain import ChatRSD


class TestChatRSDUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatRSD]:
        return ChatRSD

    @property
    def chat_model_params(self) -> dict:
        return {}

    @property
    def standard_chat_model_params(self) -> dict:
        params = super().standard_chat_model_params
        params.pop("api_key", None)  # local models: no key
        return params

    @property
    def has_tool_choice(self) -> bool:
        # tool_choice works (a forced, grammar-constrained call: tests/integration_tests/test_call_options.py),
        # but the standard suite's tool_choice tests need a model that fills its magic schemas, which the toy is not
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True
