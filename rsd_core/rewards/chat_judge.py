"""Rewards read from a chat model's next-token probabilities.

- ``ChatPRM`` (RLHFlow Llama3.1-8B-PRM-Mistral/-Deepseek-Data style): each step is a user turn (the first
  also holds the question); the reward is P("+") over {"+", "-"} of the assistant's one-token reply.
  Earlier steps stay in the conversation, answered "+".
- ``LLMJudge``: any chat model (the already-loaded target works, so no third model is needed) asked
  whether the newest step is correct; the reward is P(Yes) over {Yes, No}. The prompt is configurable.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM

from rsd_core.backends.hf import load_pretrained, pop_load_kwargs
from rsd_core.rewards.base import Conversation, question_of
from rsd_core.rewards.incremental import IncrementalPRM, token_id


def _pair_prob(logits: torch.Tensor, yes: int, no: int) -> torch.Tensor:
    return torch.softmax(logits[:, [yes, no]], dim=-1)[:, 0]


def _render(tokenizer: Any, conv: list[dict[str, str]], generation_prompt: bool) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("this reward model needs a tokenizer with a chat template")
    return tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=generation_prompt)


class ChatPRM(IncrementalPRM):
    def __init__(self, model: Any, tokenizer: Any, good: str = "+", bad: str = "-", name: str | None = None):
        super().__init__(model, tokenizer, name)
        self.good = good
        self.good_id, self.bad_id = token_id(tokenizer, good, "the good token"), token_id(tokenizer, bad, "the bad token")
        self._question: dict[int, str] = {}
        self._steps: dict[int, list[str]] = {}

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> ChatPRM:
        load_kw = pop_load_kwargs(kwargs)
        model, tok = load_pretrained(AutoModelForCausalLM, name_or_path, **load_kw)
        return cls(model, tok, name=name_or_path, **kwargs)

    def _conv(self, question: str, steps: list[str], answered: int) -> list[dict[str, str]]:
        conv = []
        for i, s in enumerate(steps):
            conv.append({"role": "user", "content": (question + " " if i == 0 else "") + s.strip()})
            if i < answered:
                conv.append({"role": "assistant", "content": self.good})
        return conv

    def _text(self, question: str, steps: list[str]) -> str:
        """The conversation up to the reply slot of the last step."""
        return _render(self.tokenizer, self._conv(question, steps, len(steps) - 1), True)

    def header_ids(self, conversation: Conversation) -> list[int]:
        return []

    def start(self, seq: int, conversation: Conversation) -> None:
        self._question[seq] = question_of(conversation)
        self._steps[seq] = []
        self.cached.new(seq, [])
        self._lens[seq] = []

    def step_ids_for(self, seq: int, step: str, index: int) -> list[int]:
        q, prev = self._question[seq], self._steps[seq]
        before = self._text(q, prev) if prev else ""  # what the cache holds: up to the last reply slot
        now = self._text(q, prev + [step])  # ... the "+" reply to it, then this step's turn
        if not now.startswith(before):
            raise ValueError("this chat template does not extend a conversation append-only; ChatPRM needs that")
        prev.append(step)
        return self.encode(now[len(before):])

    def step_ids(self, step: str, index: int) -> list[int]:  # pragma: no cover - layout needs the sequence
        raise NotImplementedError

    def rollback(self, seqs: list[int]) -> None:
        super().rollback(seqs)
        for s in seqs:
            self._steps[s].pop()

    def release(self, seqs: list[int]) -> None:
        super().release(seqs)
        for s in seqs:
            self._question.pop(s, None)
            self._steps.pop(s, None)

    def reward_from(self, logits: torch.Tensor) -> torch.Tensor:
        return _pair_prob(logits, self.good_id, self.bad_id)

    @torch.inference_mode()
    def score_solution(self, conversation: Conversation, steps: list[str]) -> list[float]:
        q, out = question_of(conversation), []
        for k in range(1, len(steps) + 1):
            ids = torch.tensor([self.encode(self._text(q, steps[:k]))], device=self.cached.device)
            out.append(float(self.reward_from(self.model(input_ids=ids).logits[:, -1].float())[0]))
        return out


DEFAULT_JUDGE_PROMPT = (
    "You check solutions one step at a time. Reply with Yes if the newest step is correct and follows from "
    "the question and the steps before it, otherwise No."
)


class LLMJudge(IncrementalPRM):
    """A chat model as a judge: P(Yes) over {Yes, No} after asking about the newest step.

    Args:
        prompt: the judge's instructions (a system turn).
        question_template / step_template / ask_template: how the question, each step, and the final
            question about the newest step are written (``{question}``, ``{index}``, ``{step}``).
    """

    def __init__(self, model: Any, tokenizer: Any, prompt: str = DEFAULT_JUDGE_PROMPT,
                 question_template: str = "Question:\n{question}\n\nSolution so far:\n",
                 step_template: str = "Step {index}: {step}\n",
                 ask_template: str = "\nIs step {index} correct? Answer Yes or No.",
                 yes: str = "Yes", no: str = "No", name: str | None = None):
        super().__init__(model, tokenizer, name)
        self.prompt, self.question_template = prompt, question_template
        self.step_template, self.ask_template = step_template, ask_template
        self.yes_id, self.no_id = token_id(tokenizer, yes, "the yes token"), token_id(tokenizer, no, "the no token")
        # Render once with a marker to learn what the template puts after the user's text.
        marker = "\x00RSD\x00"
        text = _render(tokenizer, [{"role": "system", "content": prompt}, {"role": "user", "content": marker}], True)
        self._pre, self._post = text.split(marker)
        self._count: dict[int, int] = {}

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> LLMJudge:
        load_kw = pop_load_kwargs(kwargs)
        model, tok = load_pretrained(AutoModelForCausalLM, name_or_path, **load_kw)
        return cls(model, tok, name=name_or_path, **kwargs)

    def header_ids(self, conversation: Conversation) -> list[int]:
        return self.encode(self._pre + self.question_template.format(question=question_of(conversation)))

    def step_ids(self, step: str, index: int) -> list[int]:
        self._last_index = index + 1
        return self.encode(self.step_template.format(index=index + 1, step=step.strip()))

    def query_ids(self, step: str) -> list[int]:
        return self.encode(self.ask_template.format(index=self._last_index) + self._post)

    def reward_from(self, logits: torch.Tensor) -> torch.Tensor:
        return _pair_prob(logits, self.yes_id, self.no_id)
