from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/ensemblehub"


class DatabaseSettings(BaseSettings):
    """Where the truth lives. Read from ``ENSEMBLEHUB_DATABASE_URL``."""

    model_config = SettingsConfigDict(env_prefix="ENSEMBLEHUB_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    pool_size: int = 10
    connect_timeout_s: float = 3.0
