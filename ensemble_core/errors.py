"""The exception tree of the ensemble library.

Every error carries a stable ``code`` (stored with a failed job, shown to API clients) and a
human message. The outer layers translate these once at their boundary.
"""

from __future__ import annotations


class EnsembleError(Exception):
    """Base of every error raised on purpose by ``ensemble_core``."""

    code: str = "ensemble_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class ConfigError(EnsembleError, ValueError):
    """An ensemble config or spec names an unknown method, parameter or value."""

    code = "invalid_config"


class ModelLoadError(EnsembleError):
    """A model could not be loaded (missing path, no GPU for quantization, bad weights)."""

    code = "model_load_failed"


class GenerationError(EnsembleError):
    """Generation or scoring failed while a job was running."""

    code = "generation_failed"


class ScorerError(GenerationError):
    """A scorer failed (e.g. the remote scorer did not answer after its retries)."""

    code = "scorer_failed"
