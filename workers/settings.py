from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENSEMBLEHUB_", extra="ignore")

    # converted bundled models (GGUF -> safetensors) are cached here once
    model_cache_dir: Path = Path.home() / ".cache" / "ensemblehub" / "models"
    # jobs one worker process runs at once (Celery threads pool): their decode steps on the same
    # model are batched, so more concurrent jobs means more tokens per second, up to the
    # batcher's row limit; each running job holds its KV cache in memory
    concurrency: int = Field(8, ge=1, le=256)
    heartbeat_interval_s: float = 5.0
    # the sweeper (Celery beat): how often it runs and what it considers lost
    sweep_interval_s: float = 10.0
    unsent_grace_s: float = 5.0  # a queued job not sent to the broker after this is sent by the sweeper
    resend_after_s: float = 900.0  # a queued job sent this long ago without starting is sent again
    job_dead_after_s: float = 30.0  # a running job without a heartbeat for this long lost its worker
    # a webhook attempt still pending this long after it was due lost its task: send it again
    webhook_stale_after_s: float = 60.0
    max_attempts: int = 3  # after this many lost workers the job fails with `worker_lost`
    # a worker keeps retrying a database write (claim, result) this long while Postgres is down
    database_retry_s: float = 120.0
