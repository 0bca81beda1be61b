"""The remote's ``/chat/completions`` for a chat prompt (``engine_options.prompt_format: chat``).

The server applies its own chat template. A segment after the first continues the answer
written so far: it is sent as a final assistant message with vLLM's ``continue_final_message``
(and ``add_generation_prompt: false``), so the server extends that message instead of opening
a new turn. The answer's log-probabilities come back in the chat shape
(``logprobs.content[i].{token, logprob, top_logprobs}``) and are turned into the completions
shape the session cuts segments from.
"""

from __future__ import annotations

from typing import Any

from ensemble_core.spec import ChatMessage


def chat_body(
    messages: list[ChatMessage], accepted_text: str, fields: dict[str, Any], top_logprobs: int
) -> dict[str, Any]:
    """The request body: the chat, the answer so far as the assistant's unfinished turn."""
    turns = [{"role": m.role, "content": m.content} for m in messages]
    body: dict[str, Any] = {**fields, "logprobs": True, "top_logprobs": top_logprobs}
    if accepted_text:
        turns.append({"role": "assistant", "content": accepted_text})
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    body["messages"] = turns
    return body


def as_completion_choice(choice: dict[str, Any]) -> dict[str, Any]:
    """A chat choice in the completions shape: ``text`` and ``logprobs.{tokens,
    token_logprobs, top_logprobs}``."""
    message = choice.get("message") or {}
    content = ((choice.get("logprobs") or {}).get("content")) or []
    logprobs = {
        "tokens": [str(entry.get("token", "")) for entry in content],
        "token_logprobs": [entry.get("logprob") for entry in content],
        "top_logprobs": [
            {str(t.get("token", "")): t.get("logprob") for t in entry.get("top_logprobs") or []}
            for entry in content
        ],
    }
    return {
        "text": str(message.get("content") or ""),
        "finish_reason": choice.get("finish_reason"),
        "logprobs": logprobs if content else None,
    }
