"""A LangChain agent (``langchain.agents.create_agent``, on LangGraph) that calls a tool, on the embedded toy trio.

    pip install -e ".[agents]"     # langchain + langgraph
    python examples/langchain_agent.py

The toy draft never learned to call tools: when it proposes a step for the tool call, the PRM gives
it a low reward and the target writes the call instead. The printout shows which model wrote what.

Left to itself the toy target misspells a tool name it never saw; with tools bound, every call a model
starts is held to the tools' grammar (the name is one of the tools, the arguments fit the schema), so the
agent runs as written, with no forced first turn.
"""

from langchain.agents import create_agent
from langchain_core.tools import tool

from rsd_integrations.langchain import ChatRSD, RSDCallbackHandler


@tool
def square(x: int) -> int:
    """Square a number."""
    print(f"  (tool) square({x})")
    return x * x


class PrintSteps(RSDCallbackHandler):
    def on_rsd_step(self, step, **kwargs):
        reward = "-" if step["reward"] is None else f"{step['reward']:.2f}"
        print(f"  [{step['source']:6s} reward {reward} {'kept' if step['accepted'] else 'rejected'}] "
              f"{step['text'].strip()}")


agent = create_agent(ChatRSD(threshold=0.7), tools=[square])
state = agent.invoke({"messages": [("user", "What is the value of square(12)? Use the tool.")]},
                     config={"callbacks": [PrintSteps()]})
for m in state["messages"]:
    calls = getattr(m, "tool_calls", None)
    print(f"{m.type:>5}: {calls if calls else m.content}")
