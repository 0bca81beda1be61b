from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    """Settings of the HTTP service (``ENSEMBLEHUB_*`` environment variables)."""

    model_config = SettingsConfigDict(env_prefix="ENSEMBLEHUB_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    # the synchronous endpoints wait this long for the job, then answer 504 with the job id
    sync_timeout_s: float = 60.0
    # a request's own `timeout` field is capped here
    max_sync_timeout_s: float = 600.0
    flower_basic_auth: str | None = None
    flower_port: int = 5555
    webhook_secret: str | None = None
    webhook_allowlist: str = ""
    # embedded mode: SQLite + in-process worker (set by `ensemblehub up` when services are missing)
    embedded: bool = False
