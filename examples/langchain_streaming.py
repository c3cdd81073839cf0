"""Streaming from ChatRSD: text arrives token by token, and each step's record at its first chunk.

    python examples/langchain_streaming.py
"""

from rsd_integrations.langchain import ChatRSD

llm = ChatRSD()
full = None
for chunk in llm.stream("Cal has 18 shells. He finds 57 more. He uses 9. How many shells does Cal have now?"):
    for step in chunk.response_metadata.get("rsd_steps", []):
        reward = "-" if step["reward"] is None else f"{step['reward']:.2f}"
        print(f"\n--- step {step['index']} from the {step['source']} (reward {reward})")
    print(chunk.content, end="", flush=True)
    full = chunk if full is None else full + chunk
print("\n\nusage:", full.usage_metadata)
print("acceptance rate:", full.response_metadata["rsd"]["acceptance_rate"])
