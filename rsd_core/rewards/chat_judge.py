"""Rewards read from a chat model's next-token probabilities.

- ``ChatPRM`` (RLHFlow/Llama3.1-8B-PRM-Mistral-Data and -Deepseek-Data): the reference builds a
  conversation whose first user turn is ``question + " " + step_1``, every later step its own user
  turn, every earlier assistant reply ``"+"``, and reads P("+") over {"+", "-"} where the reply to the
  newest step would be predicted. Here the conversation grows by the template's own rendering, so
  the ids are those of the whole conversation rendered at once.
- ``LLMJudge``: any chat model (the already-loaded target works, so no third model is needed) asked
  whether the newest step is correct; the reward is P(Yes) over {Yes, No}. The prompt is configurable.
"""

from __future__ import annotations

from typing import Any

import torch

from rsd_core.rewards.base import Conversation, question_of
from rsd_core.rewards.format import MARKER, PRMFormat, render_chat, token_id
from rsd_core.rewards.incremental import IncrementalPRM


def _pair_prob(logits: torch.Tensor, yes: int, no: int) -> torch.Tensor:
    return torch.softmax(logits[:, [yes, no]], dim=-1)[:, 0]


class ChatPRMFormat(PRMFormat):
    """Each step a user turn (the first with the question), earlier steps answered ``good``."""

    def __init__(self, tokenizer: Any, good: str = "+", bad: str = "-"):
        super().__init__(tokenizer)
        self.good = good
        self.good_id, self.bad_id = token_id(tokenizer, good, "the good token"), token_id(tokenizer, bad, "the bad token")

    def _conv(self, question: str, steps: list[str]) -> list[dict[str, str]]:
        conv = []
        for i, s in enumerate(steps):
            if i:
                conv.append({"role": "assistant", "content": self.good})
            conv.append({"role": "user", "content": (question + " " if i == 0 else "") + s.strip()})
        return conv

    def _text(self, question: str, steps: list[str]) -> str:
        """The conversation up to the reply slot of the last step."""
        return render_chat(self.tokenizer, self._conv(question, steps), True)

    def header_ids(self, conversation: Conversation) -> list[int]:
        return []  # the template's header is rendered with the first step

    def step_ids(self, conversation: Conversation, previous: list[str], step: str) -> list[int]:
        q = question_of(conversation)
        before = self._text(q, previous) if previous else ""  # what the cache holds: up to the last reply slot
        now = self._text(q, previous + [step])  # ... the "+" reply to it, then this step's turn
        if not now.startswith(before):
            raise ValueError("this chat template does not extend a conversation append-only; ChatPRM needs that")
        return self.encode(now) if not previous else self.continuation(before, now[len(before):])

    def reward_from(self, output: torch.Tensor) -> torch.Tensor:
        return _pair_prob(output, self.good_id, self.bad_id)


class ChatPRM(IncrementalPRM):
    format: ChatPRMFormat
    format_class = ChatPRMFormat


DEFAULT_JUDGE_PROMPT = (
    "You check solutions one step at a time. Reply with Yes if the newest step is correct and follows from "
    "the question and the steps before it, otherwise No."
)


class JudgeFormat(PRMFormat):
    """A chat model as a judge: P(Yes) over {Yes, No} after asking about the newest step.

    Args:
        prompt: the judge's instructions (a system turn).
        question_template / step_template / ask_template: how the question, each step, and the final
            question about the newest step are written (``{question}``, ``{index}``, ``{step}``).
    """

    def __init__(self, tokenizer: Any, prompt: str = DEFAULT_JUDGE_PROMPT,
                 question_template: str = "Question:\n{question}\n\nSolution so far:\n",
                 step_template: str = "Step {index}: {step}\n",
                 ask_template: str = "\nIs step {index} correct? Answer Yes or No.",
                 yes: str = "Yes", no: str = "No"):
        super().__init__(tokenizer)
        self.prompt, self.question_template = prompt, question_template
        self.step_template, self.ask_template = step_template, ask_template
        self.yes_id, self.no_id = token_id(tokenizer, yes, "the yes token"), token_id(tokenizer, no, "the no token")
        # What the template puts before the user's text and after it, up to the reply: learned once, with a marker.
        asked = [{"role": "system", "content": prompt}, {"role": "user", "content": MARKER}]
        self._pre, self._post = render_chat(tokenizer, asked, True).split(MARKER, 1)

    def header_ids(self, conversation: Conversation) -> list[int]:
        return self.encode(self._pre + self.question_template.format(question=question_of(conversation)))

    def step_ids(self, conversation: Conversation, previous: list[str], step: str) -> list[int]:
        return self.encode(self.step_template.format(index=len(previous) + 1, step=step.strip()))

    def query_ids(self, conversation: Conversation, previous: list[str], step: str) -> list[int]:
        return self.encode(self.ask_template.format(index=len(previous) + 1) + self._post)

    def reward_from(self, output: torch.Tensor) -> torch.Tensor:
        return _pair_prob(output, self.yes_id, self.no_id)


class LLMJudge(IncrementalPRM):
    """``LLMJudge.from_pretrained(path)``, or ``LLMJudge(JudgeFormat(tokenizer), model)`` around a model already
    loaded (the decoder does that to let the target judge)."""

    format: JudgeFormat
    format_class = JudgeFormat
