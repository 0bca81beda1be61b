"""Caps on what one request may ask, so that one client cannot tie a worker up for hours.

Each refusal is a 400 that names the field, the value and the cap (``ENSEMBLEHUB_MAX_*``).
The body size (413), the batch size (413) and the per-tenant rate (429) are checked elsewhere:
in ``api.guards`` and ``batch_service``.
"""

from __future__ import annotations

from api.errors import ApiError
from api.settings import ApiSettings
from ensemble_core.spec import EnsembleConfig, GenerationRequest


def check_request_limits(
    settings: ApiSettings, generation: GenerationRequest, config: EnsembleConfig, *, param_prefix: str = ""
) -> None:
    where = f"{param_prefix.rstrip('.')}: " if param_prefix else ""
    prompt = generation.prompt_input()
    chars = sum(len(m.content) for m in prompt.as_messages())
    chars += 4 * len(prompt.token_ids or [])  # an id stands for a few characters of text
    if chars > settings.max_prompt_chars:
        raise ApiError(
            400,
            f"{where}the prompt has {chars} characters; this server takes at most "
            f"{settings.max_prompt_chars} (ENSEMBLEHUB_MAX_PROMPT_CHARS)",
            code="prompt_too_long",
            param=f"{param_prefix}{'messages' if prompt.is_chat else 'prompt'}",
        )
    if generation.max_tokens > settings.max_tokens_limit:
        raise ApiError(
            400,
            f"{where}max_tokens={generation.max_tokens} is more than this server allows "
            f"({settings.max_tokens_limit}, ENSEMBLEHUB_MAX_TOKENS_LIMIT)",
            code="max_tokens_too_large",
            param=f"{param_prefix}max_tokens",
        )
    check_max_rounds(settings, config.max_rounds, param=f"{param_prefix}max_rounds")
    check_work_multipliers(settings, config, param_prefix=param_prefix)


# method parameters that multiply a job's work, with the setting that caps each
WORK_MULTIPLIERS = {
    "max_resamples": ("max_resamples_limit", "ENSEMBLEHUB_MAX_RESAMPLES_LIMIT"),
    "probe_tokens": ("max_probe_tokens_limit", "ENSEMBLEHUB_MAX_PROBE_TOKENS_LIMIT"),
    "samples_per_model": ("max_samples_per_model_limit", "ENSEMBLEHUB_MAX_SAMPLES_PER_MODEL_LIMIT"),
}


def check_work_multipliers(settings: ApiSettings, config: EnsembleConfig, *, param_prefix: str = "") -> None:
    """``max_resamples``, ``probe_tokens`` and ``samples_per_model`` multiply the decodes of a
    job; each is capped like ``max_tokens`` (400 naming the parameter and the cap)."""
    for field in ("model_selection_params", "aggregation_params"):
        params = getattr(config, field)
        for name, (setting, env) in WORK_MULTIPLIERS.items():
            value, cap = params.get(name), getattr(settings, setting)
            if isinstance(value, int) and not isinstance(value, bool) and value > cap:
                raise ApiError(
                    400,
                    f"{name}={value} is more than this server allows ({cap}, {env})",
                    code="parameter_too_large",
                    param=f"{param_prefix}ensemble_config.{field}.{name}",
                )


def check_max_rounds(settings: ApiSettings, max_rounds: int | None, *, param: str = "max_rounds") -> None:
    if max_rounds is not None and max_rounds > settings.max_rounds_limit:
        raise ApiError(
            400,
            f"max_rounds={max_rounds} is more than this server allows "
            f"({settings.max_rounds_limit}, ENSEMBLEHUB_MAX_ROUNDS_LIMIT)",
            code="max_rounds_too_large",
            param=param,
        )
