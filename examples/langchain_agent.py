"""A LangChain agent (``langchain.agents.create_agent``, on LangGraph) that calls a tool, on the embedded toy trio.

    pip install -e ".[agents]"     # langchain + langgraph
    python examples/langchain_agent.py

The toy draft never learned to call tools: when it proposes a step for the tool call, the PRM gives
it a low reward and the target writes the call instead. The printout shows which model wrote what.

The toy target writes the call's format and arguments but cannot reliably spell a tool's name it has
never seen, so a middleware forces a call on the first turn (``tool_choice="any"``: with one tool,
the reply starts with that tool's name); a real instruct model needs no such help.
"""

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware
from langchain_core.messages import ToolMessage
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


class CallAToolFirst(AgentMiddleware):
    """The first model turn must call a tool; later turns (after a tool result) decide freely."""

    def wrap_model_call(self, request, handler):
        if not any(isinstance(m, ToolMessage) for m in request.messages):
            request = request.override(tool_choice="any")
        return handler(request)


agent = create_agent(ChatRSD(threshold=0.7), tools=[square], middleware=[CallAToolFirst()])
state = agent.invoke({"messages": [("user", "What is the value of square(12)? Use the tool.")]},
                     config={"callbacks": [PrintSteps()]})
for m in state["messages"]:
    calls = getattr(m, "tool_calls", None)
    print(f"{m.type:>5}: {calls if calls else m.content}")
