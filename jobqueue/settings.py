from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class QueueSettings(BaseSettings):
    """Broker and task limits. Read from ``ENSEMBLEHUB_BROKER_URL`` and friends."""

    model_config = SettingsConfigDict(env_prefix="ENSEMBLEHUB_", extra="ignore")

    broker_url: str = "redis://127.0.0.1:6379/0"
    # seconds: a job running longer than this is killed and failed
    task_hard_time_limit_s: int = 1800
    task_soft_time_limit_s: int = 1700
    # scale-out by member set (jobqueue.routing): each job goes to the queue of its members and
    # only workers started with --members (or --config-version) that hold them take it
    route_by_members: bool = False
