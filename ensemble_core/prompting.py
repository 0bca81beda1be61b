"""From a request's prompt to the text (and leading special ids) one member's model reads.

Three cases, the way vLLM's endpoints treat them:

- a raw prompt (``/v1/completions``) is continued as is, for every member: no chat template,
  only the special tokens the tokenizer itself adds to plain text (a BOS for Llama or Gemma);
- chat messages to a ``prompt_format: chat`` member go through its chat template (the spec's
  ``chat_template`` or the tokenizer's); the template writes its own BOS, so none is added;
- chat messages to a ``prompt_format: raw`` member (a base model) are written as plain text by
  a turn template, "Question: ... / Answer:" by default, and the member's answer ends where it
  would start the next turn (``raw_stop``), since a base model otherwise goes on with a new
  question of its own.

Tokenizers are duck-typed (``apply_chat_template``, ``__call__``): this module imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ensemble_core.errors import GenerationError
from ensemble_core.ports import SegmentLimits
from ensemble_core.spec import ChatMessage, PromptInput, PromptStyle

DEFAULT_RAW_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m.role == 'system' %}{{ m.content }}\n\n"
    "{% elif m.role == 'user' %}Question: {{ m.content }}\n"
    "{% else %}Answer: {{ m.content }}\n\n{% endif %}"
    "{% endfor %}Answer:"
)
DEFAULT_RAW_STOP = ("\nQuestion:",)

_FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


@dataclass(frozen=True)
class RenderedPrompt:
    """One member's prompt as text.

    ``add_special_tokens``: the tokenizer's own special ids for plain text (BOS) go in front,
    as a completion server adds them; a chat template already wrote its own.
    ``stop_strings`` end this member's answer (the raw turn template's next turn).
    ``separator`` goes between the prompt and an accepted answer that does not start with
    whitespace (another member's "4" after "Answer:" reads "Answer: 4", as the base model
    itself would have written it).
    """

    text: str
    add_special_tokens: bool
    stop_strings: tuple[str, ...] = ()
    separator: str = ""
    ids: tuple[int, ...] | None = None  # a token-id prompt: these ids, not the text's

    def join(self, accepted_text: str) -> str:
        if self.separator and accepted_text and not accepted_text[:1].isspace():
            return self.text + self.separator + accepted_text
        return self.text + accepted_text

    def token_ids(
        self, encode: Callable[[str], list[int]], leading_ids: list[int], accepted_text: str = ""
    ) -> list[int]:
        """Ids of the prompt followed by ``accepted_text``: for a raw prompt what the tokenizer
        gives plain text (``leading_ids``, its BOS, first), for a chat template its text alone.
        ``encode`` adds no special tokens."""
        if self.ids is not None:  # the answer is tokenized on its own after the given ids
            return list(self.ids) + (encode(accepted_text) if accepted_text else [])
        lead = leading_ids if self.add_special_tokens else []
        return list(lead) + encode(self.join(accepted_text))


def render_chat(tokenizer: Any, messages: list[ChatMessage], chat_template: str | None = None) -> str:
    """The chat template (``chat_template``, else the model's own) applied to ``messages``,
    ready for the assistant's turn."""
    payload = [{"role": m.role, "content": m.content} for m in messages]
    template = chat_template
    if template is None and not getattr(tokenizer, "chat_template", None):
        template = _FALLBACK_CHAT_TEMPLATE
    text = tokenizer.apply_chat_template(
        payload, tokenize=False, add_generation_prompt=True, chat_template=template
    )
    return str(text)


def with_stops(limits: SegmentLimits, rendered: RenderedPrompt) -> SegmentLimits:
    """``limits`` plus the member's own turn stops."""
    extra = tuple(s for s in rendered.stop_strings if s not in limits.stop_strings)
    return replace(limits, stop_strings=limits.stop_strings + extra) if extra else limits


def render_turns(messages: list[ChatMessage], template: str | None = None) -> str:
    """Chat messages as plain text for a base model (``DEFAULT_RAW_TEMPLATE`` unless given)."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        compiled = ImmutableSandboxedEnvironment().from_string(template or DEFAULT_RAW_TEMPLATE)
        payload = [{"role": m.role, "content": m.content} for m in messages]
        return str(compiled.render(messages=payload, add_generation_prompt=True, bos_token="", eos_token=""))
    except TemplateError as exc:
        raise GenerationError(f"raw_template failed to render: {exc}") from exc


def render_prompt(prompt: PromptInput, style: PromptStyle, tokenizer: Any | None) -> RenderedPrompt:
    """``prompt`` as the member with ``style`` reads it (``tokenizer`` renders chat templates)."""
    if prompt.token_ids is not None:
        if tokenizer is None:
            raise GenerationError("a token-id prompt needs the model's own tokenizer (not a remote model)")
        text = str(tokenizer.decode(prompt.token_ids))
        return RenderedPrompt(text, add_special_tokens=False, ids=tuple(prompt.token_ids))
    if prompt.messages is None:
        return RenderedPrompt(prompt.text or "", add_special_tokens=True)
    if style.format == "raw":
        stops = DEFAULT_RAW_STOP if style.raw_stop is None else style.raw_stop
        text = render_turns(prompt.messages, style.raw_template)
        # the default ends "Answer:"; a custom template ending in a space needs no separator
        separator = " " if text and not text[-1].isspace() else ""
        return RenderedPrompt(text, add_special_tokens=True, stop_strings=tuple(stops), separator=separator)
    if tokenizer is None:
        raise GenerationError("a chat prompt needs the model's tokenizer to render its chat template")
    return RenderedPrompt(
        render_chat(tokenizer, prompt.messages, style.chat_template), add_special_tokens=False
    )


def leading_special_ids(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts in front of plain text (e.g. BOS), found by comparison so
    that tokenizers which add nothing, or add a trailing EOS too, are handled alike."""
    sample = "Hello world"
    with_special = list(tokenizer(sample)["input_ids"])
    plain = list(tokenizer(sample, add_special_tokens=False)["input_ids"])
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return with_special[:start]
    return []
