from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENSEMBLEHUB_", extra="ignore")

    # converted bundled models (GGUF -> safetensors) are cached here once
    model_cache_dir: Path = Path.home() / ".cache" / "ensemblehub" / "models"
    heartbeat_interval_s: float = 5.0
