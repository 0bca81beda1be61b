"""The prompt of one evaluation item: an instruction, three worked examples of its kind, the question.

The prompt is chat messages (system, then the examples as user/assistant turns, then the
question): an instruct model reads them through its chat template, and a member configured with
``prompt_format: raw`` (a base model) gets the same turns rendered as plain few-shot text by the
engine, so one request prompts each member the way it works. The examples come from
``fact_lists.EXEMPLARS``, which no item repeats. Answers are one short line: the runner stops
at a newline.
"""

from __future__ import annotations

from ensemble_core.spec import ChatMessage
from evaluation.fact_lists import EXEMPLARS
from evaluation.item_set import Item

INSTRUCTIONS = {
    "arithmetic": "Answer with the number only.",
    "word_problem": "Answer with the number only.",
    "fact": "Answer in one or two words.",
    "multiple_choice": "Answer with the letter of the correct option only.",
}
DEFAULT_INSTRUCTION = "Answer briefly, on one line."


def item_messages(item: Item) -> list[ChatMessage]:
    messages = [ChatMessage(role="system", content=INSTRUCTIONS.get(item.kind, DEFAULT_INSTRUCTION))]
    for question, answer in EXEMPLARS.get(item.kind, ()):
        messages.append(ChatMessage(role="user", content=question))
        messages.append(ChatMessage(role="assistant", content=answer))
    messages.append(ChatMessage(role="user", content=item.question))
    return messages
