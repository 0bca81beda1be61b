from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobqueue.routing import parse_members


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENSEMBLEHUB_", extra="ignore")

    # converted bundled models (GGUF -> safetensors) are cached here once
    model_cache_dir: Path = Path.home() / ".cache" / "ensemblehub" / "models"
    # jobs one worker process runs at once (Celery threads pool): their decode steps on the same
    # model are batched, so more concurrent jobs means more tokens per second, up to the
    # batcher's row limit; each running job holds its KV cache in memory
    concurrency: int = Field(8, ge=1, le=256)
    heartbeat_interval_s: float = 5.0
    # the members this worker holds (``ensemblehub worker --members a,b`` or ``--config-version
    # N`` set these; jobqueue.routing): it refuses a job that names any other member, so it never
    # loads a model it was not given. Empty: any member a job names (no routing)
    worker_members: str = ""
    worker_config_version: int | None = None
    # streamed text goes to Redis at most this often per job (0: every decoded token)
    stream_coalesce_s: float = Field(0.03, ge=0, le=1)
    # the sweeper: how often it runs and what it considers lost. Every worker runs its schedule
    # (one leader at a time, a Redis lease: workers/sweep_schedule.py), so no beat is needed
    sweep_in_workers: bool = True
    sweep_interval_s: float = 10.0
    unsent_grace_s: float = 5.0  # a queued job not sent to the broker after this is sent by the sweeper
    resend_after_s: float = 900.0  # a queued job sent this long ago without starting is sent again
    job_dead_after_s: float = 30.0  # a running job without a heartbeat for this long lost its worker
    # a webhook attempt still pending this long after it was due lost its task: send it again
    webhook_stale_after_s: float = 60.0
    # a webhook attempt in `sending` this long lost its worker mid-POST (kill -9): send it again;
    # longer than the webhook HTTP timeout (ENSEMBLEHUB_WEBHOOK_TIMEOUT_S) so a slow live send
    # is not doubled
    webhook_stuck_after_s: float = 120.0
    # a job stored without its own `deadline_s` (the API sets one on every job it accepts) stops
    # after running this long (0: never), error code `deadline_exceeded`, partial answer kept
    job_deadline_s: float = Field(3600.0, ge=0)
    max_attempts: int = 3  # after this many lost workers the job fails with `worker_lost`
    # a worker keeps retrying a database write (claim, result) this long while Postgres is down.
    # Shorter than job_dead_after_s (checked below): a worker still waiting out an outage is
    # never declared dead by the sweeper; one that waited longer has given up its write
    # (fenced writes make the late one harmless either way)
    database_retry_s: float = 20.0

    def held_members(self) -> list[str] | None:
        return parse_members(self.worker_members) or None

    @model_validator(mode="after")
    def _dead_after_exceeds_retry(self) -> WorkerSettings:
        if self.job_dead_after_s <= self.database_retry_s:
            raise ValueError(
                f"ENSEMBLEHUB_JOB_DEAD_AFTER_S ({self.job_dead_after_s:g}) must exceed "
                f"ENSEMBLEHUB_DATABASE_RETRY_S ({self.database_retry_s:g}): the sweeper would "
                "re-queue jobs of workers still waiting for the database"
            )
        return self
