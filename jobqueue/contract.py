"""Task and queue names. They are what Flower shows, so they read as what the task does."""

from __future__ import annotations

RUN_JOB_TASK = "ensemblehub.run_job"
DELIVER_WEBHOOK_TASK = "ensemblehub.deliver_webhook"
SWEEP_TASK = "ensemblehub.sweep_jobs"

MODELS_QUEUE = "models"
WEBHOOKS_QUEUE = "webhooks"
MAINTENANCE_QUEUE = "maintenance"
ALL_QUEUES = (MODELS_QUEUE, WEBHOOKS_QUEUE, MAINTENANCE_QUEUE)


# Redis pub/sub channels for streaming and completion notices (see jobqueue.events)
def job_events_channel(job_id: str) -> str:
    return f"ensemblehub:job:{job_id}:events"


# one channel for every cancel, carrying the job ids: a worker process subscribes to it once
# (workers.job_watch) instead of once per running job. Pub/sub ignores the Redis db number, so
# stacks sharing a Redis server hear each other's cancels; a job id it does not run is ignored
JOB_CANCELS_CHANNEL = "ensemblehub:jobs:cancels"


REPLY_CHANNEL_PREFIX = "ensemblehub:reply:"


def reply_channel(inbox: str) -> str:
    """An API process's own channel for the done events of the jobs it waits for
    (``jobqueue.reply_inbox``)."""
    return f"{REPLY_CHANNEL_PREFIX}{inbox}"


def is_reply_channel(name: object) -> bool:
    """Whether a job's ``reply_to`` is a reply channel (the API wrote it; a worker publishes
    to nothing else)."""
    return isinstance(name, str) and name.startswith(REPLY_CHANNEL_PREFIX) and len(name) < 128
