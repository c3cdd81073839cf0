"""A LangChain chain (prompt | ChatRSD | parser) that prints each reasoning step's reward.

    python examples/langchain_chain.py
"""

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from rsd_integrations.langchain import ChatRSD, RSDCallbackHandler


class PrintSteps(RSDCallbackHandler):
    def on_rsd_step(self, step, **kwargs):
        reward = "-" if step["reward"] is None else f"{step['reward']:.2f}"
        print(f"  step {step['step_index']} [{step['source']:6s} reward {reward} "
              f"{'kept' if step['accepted'] else 'rejected'}] {step['text'].strip()}")

    def on_rsd_target_invocation(self, event, **kwargs):
        print(f"  -> target called for step {event['step_index']} ({event['reason']})")


prompt = ChatPromptTemplate.from_messages([("user", "{question}")])
chain = prompt | ChatRSD(threshold=0.7) | StrOutputParser()
answer = chain.invoke({"question": "Ben has 63 cards. He wins 29 more. He loses 45. How many cards does Ben have now?"},
                      config={"callbacks": [PrintSteps()]})
print("answer:", answer.splitlines()[-1])
