"""RSD on the embedded toy trio, printing every step as it is decided.

    python examples/quickstart.py
"""

from rsd_core import RewardGuidedDecoder, RSDConfig


def show(event):
    if hasattr(event, "accepted"):
        verdict = "kept" if event.accepted else "rejected"
        reward = "-" if event.reward is None else f"{event.reward:.2f}"
        print(f"  [{event.source:6s} reward {reward:>4s} {verdict:8s}] {event.text.strip()}")


dec = RewardGuidedDecoder.from_pretrained(config=RSDConfig(threshold=0.7))
question = "Ann has 47 apples. She buys 38 more. She gives away 19. How many apples does Ann have now?"
print(question)
result = dec.generate([[{"role": "user", "content": question}]], callbacks=[show])[0]
s = result.stats
print(f"acceptance {s.acceptance_rate:.2f}, target calls {s.target_invocations}, "
      f"target tokens {s.target.decode_tokens}, draft tokens {s.draft.decode_tokens}, FLOPs {s.total_flops:.3g}")
