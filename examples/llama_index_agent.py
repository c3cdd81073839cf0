"""LlamaIndex agents with RSDLLM on the embedded toy trio: a FunctionAgent calling a tool and answering from
its result, then a ReActAgent reasoning in the ReAct text format.

    python examples/llama_index_agent.py

FunctionAgent uses the model's own tool-call format (``<tool_call>{json}</tool_call>``), which the toy
target was taught; the toy draft was not, so the PRM rejects its attempt and the target writes the call.
Left to itself the toy misspells a tool name it never saw; with tools offered, every call a model starts
is held to the tools' grammar (a real tool's name, arguments that fit its schema), so the agent runs as
written: the model calls the tool and then answers from the result.

ReActAgent describes the tools and the Thought / Action / Answer format in a long system header and parses
the model's text. The toy answers a word problem in that format (it cannot spell an unseen tool's name
in an ``Action:`` line, and ReAct offers the model no tools to hold it to, so it is given a question that
needs no tool).
"""

import asyncio

from llama_index.core.agent.workflow import FunctionAgent, ReActAgent
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.tools import FunctionTool

from rsd_integrations.llama_index import RSDLLM, RSDStepEvent, RSDTargetInvocationEvent


def square(x: int) -> int:
    """Square a number."""
    print(f"  (tool) square({x})")
    return x * x


class PrintSteps(BaseEventHandler):
    @classmethod
    def class_name(cls) -> str:
        return "PrintSteps"

    def handle(self, event, **kwargs):
        if isinstance(event, RSDStepEvent):
            reward = "-" if event.reward is None else f"{event.reward:.2f}"
            print(f"  [{event.source:6s} reward {reward} {'kept' if event.accepted else 'rejected'}] "
                  f"{event.text.strip()}")
        elif isinstance(event, RSDTargetInvocationEvent):
            print(f"  -> target writes step {event.step_index} ({event.reason})")


async def main() -> None:
    get_dispatcher().add_event_handler(PrintSteps())
    llm = RSDLLM(threshold=0.7)
    tools = [FunctionTool.from_defaults(square)]

    agent = FunctionAgent(tools=tools, llm=llm)
    print("answer:", await agent.run("What is the value of square(12)? Use the tool."))

    print("\nReActAgent:")
    react = ReActAgent(tools=tools, llm=llm)
    print("answer:", await react.run("Lou has 98 books. She buys 22 more. She sells 40. How many books does Lou have now?"))


asyncio.run(main())
