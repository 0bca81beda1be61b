from __future__ import annotations

from pydantic import Field
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
    # a job runs at most this long (seconds, from the start of its attempt) unless its request
    # asks for less or more (`deadline_s`, capped below); past it the engine stops and the job
    # fails with `deadline_exceeded`, its partial answer kept
    job_deadline_s: float = Field(600.0, gt=0)
    max_job_deadline_s: float = Field(3600.0, gt=0)
    # POST /v1/jobs/{id}/cancel of a running job waits this long for the worker to store the
    # partial answer (it stops within a decode step), so the answer shows it
    cancel_wait_s: float = Field(3.0, ge=0)
    flower_basic_auth: str | None = None
    flower_port: int = 5555
    # webhook settings (secret, allowlist, retry schedule): jobqueue.webhook_policy.WebhookSettings
    # API keys live in Postgres (`ensemblehub keys create --tenant NAME`); these comma-separated
    # keys (the older way) also work, as admin keys of the tenant "default"
    api_keys: str = ""
    # per-tenant rate limit: at most this many requests per window (0: no limit); past it 429
    rate_limit_requests: int = 600
    rate_limit_window_s: int = 60
    # API-key lookups are cached per process and dropped as soon as any key changes (Postgres
    # LISTEN/NOTIFY, persistence/api_key_cache.py); an answer lives at most this long (0: no cache)
    api_key_cache_ttl_s: float = Field(10.0, ge=0, le=300)
    # caps on what one request may ask (400 with the cap in the message)
    max_prompt_chars: int = 200_000
    max_tokens_limit: int = 4096
    max_rounds_limit: int = 64
    # method parameters that multiply the work of one job (api/services/limits.py)
    max_resamples_limit: int = 8
    max_probe_tokens_limit: int = 256
    max_samples_per_model_limit: int = 32
    # request bodies above this answer 413 (a 10,000-item batch is about 2 MB)
    max_request_bytes: int = 64 * 1024 * 1024
    max_batch_items: int = 50_000
    # back-pressure: past this many queued jobs new work answers 429 (0: no limit)
    max_queued_jobs: int = 200_000
    # one tenant's share of it (0: no per-tenant limit)
    max_queued_jobs_per_tenant: int = 50_000
    # group commit (api/services/group_commit.py): at most this many concurrent submissions share
    # one INSERT, COMMIT and broker pipeline; a lone one waits this long for company (seconds)
    submit_group_max_rows: int = Field(100, ge=1)
    submit_group_linger_s: float = Field(0.001, ge=0, le=0.05)
    # a stream sends an SSE comment this often while no segment arrives (keeps proxies open)
    stream_keepalive_s: float = 10.0
    # embedded mode: SQLite + in-process worker (set by `ensemblehub up` when services are missing)
    embedded: bool = False
