"""Prompts given as token ids (``/v1/completions``, as lm-eval sends them with a tokenizer).

OpenAI's ``prompt`` may be a string, a list of strings, a list of token ids or a list of such
lists. Ids mean something only in one vocabulary, so they are taken for one member, or for an
ensemble whose members are one model (the same ``path``: one tokenizer); otherwise 400 says why.
The ids reach the model as they are (no BOS added, no template).
"""

from __future__ import annotations

from typing import Any

from api.errors import ApiError
from ensemble_core.spec import EnsembleSpec


def is_token_prompt(prompt: Any) -> bool:
    return isinstance(prompt, list) and bool(prompt) and all(isinstance(t, int) for t in prompt)


def split(prompt: Any) -> list[Any]:
    """The prompts of one request: a string or one id list is one prompt; a list of strings or
    of id lists is several."""
    if prompt is None or isinstance(prompt, str) or is_token_prompt(prompt):
        return [prompt]
    return list(prompt)


def check_one_tokenizer(spec: EnsembleSpec, models: list[str] | None) -> None:
    members = [m for m in spec.model_specs if models is None or m.display_name in models]
    remote = [m.display_name for m in members if m.engine == "openai"]
    if remote:
        raise ApiError(
            400,
            f"token-id prompts need the model's tokenizer here; {', '.join(remote)} is a remote model: send text",
            code="invalid_prompt",
            param="prompt",
        )
    paths = sorted({m.path for m in members})
    if len(paths) > 1:
        names = ", ".join(m.display_name for m in members)
        raise ApiError(
            400,
            f"token ids belong to one tokenizer, and the members {names} are different models; "
            "send the prompt as text, or choose one member with model=<name>",
            code="invalid_prompt",
            param="prompt",
        )
