"""ORM rows. JSON columns are JSONB on Postgres and JSON on SQLite (embedded mode)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, deferred, mapped_column

JSONType = JSON().with_variant(JSONB(), "postgresql")

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_JOB_STATUSES = ("succeeded", "failed", "cancelled")
BATCH_STATUSES = (
    "validating",
    "in_progress",
    "finalizing",
    "completed",
    "failed",
    "cancelling",
    "cancelled",
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class Base(DeclarativeBase):
    pass


class ConfigVersion(Base):
    """An append-only ensemble configuration version (rows are never updated)."""

    __tablename__ = "config_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[int] = mapped_column(Integer, unique=True, nullable=False)
    content_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("batch"))
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="validating")
    tenant: Mapped[str | None] = mapped_column(String(128), index=True)
    total: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    completed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    failed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    cancelled: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONType)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelling_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_key", "idempotency_key", name="uq_jobs_idempotency"),
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_batch_index", "batch_id", "batch_index"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("job"))
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="queued")
    tenant: Mapped[str | None] = mapped_column(String(128), index=True)
    # NULL-safe part of the idempotency unique key ("" for the open, tenant-less mode)
    tenant_key: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    request: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    config_version_id: Mapped[int | None] = mapped_column(ForeignKey("config_versions.id"))
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    webhook_url: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id"))
    batch_index: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


WEBHOOK_DELIVERY_STATUSES = ("pending", "sending", "delivered", "failed", "blocked")


class WebhookDelivery(Base):
    """One attempt to deliver one event. The event id stays the same across retries.

    ``trigger`` says why the attempt exists: ``event`` (the first), ``retry`` (a scheduled
    retry after a failed attempt) or ``manual`` (re-sent through the API).
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), index=True, nullable=False)
    event_type: Mapped[str] = mapped_column(String(64), nullable=False)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id"), index=True)
    url: Mapped[str] = mapped_column(Text, nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    trigger: Mapped[str] = mapped_column(String(16), nullable=False, default="event")
    duration_ms: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    scheduled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WorkerHeartbeat(Base):
    """Each worker process refreshes its row; /status reads liveness and loaded models here."""

    __tablename__ = "worker_heartbeats"

    hostname: Mapped[str] = mapped_column(String(255), primary_key=True)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    loaded_models: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, nullable=False, default=list)
    # what it was started to hold (``--members``; None: any member a job names) and the queues
    # it reads (jobqueue.routing): /status lists queues with workers, and the API routes by them
    members: Mapped[list[str] | None] = mapped_column(JSONType)
    queues: Mapped[list[str] | None] = mapped_column(JSONType)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


FILE_KINDS = ("upload", "batch_output", "batch_error")


class StoredFile(Base):
    """A file of OpenAI's Files API. Uploads hold their bytes; a batch's output and error files
    are written once, from its jobs, the first time they are asked for after the batch ended."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("file"))
    kind: Mapped[str] = mapped_column(String(16), nullable=False, default="upload")
    purpose: Mapped[str] = mapped_column(String(32), nullable=False)
    filename: Mapped[str] = mapped_column(String(255), nullable=False)
    bytes: Mapped[int] = mapped_column(Integer, nullable=False)
    lines: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # deferred: listing and describing files never loads their contents
    content: Mapped[bytes] = deferred(mapped_column(LargeBinary, nullable=False))
    tenant: Mapped[str | None] = mapped_column(String(128), index=True)
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


class OpenAIBatch(Base):
    """What OpenAI's Batch API adds to a batch: its input file, endpoint and the ids its output
    and error files will have. The items are ordinary batch jobs (``jobs.batch_id``)."""

    __tablename__ = "openai_batches"

    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"), primary_key=True)
    input_file_id: Mapped[str] = mapped_column(ForeignKey("files.id"), nullable=False, index=True)
    endpoint: Mapped[str] = mapped_column(String(64), nullable=False)
    completion_window: Mapped[str] = mapped_column(String(16), nullable=False)
    output_file_id: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    error_file_id: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)


class MetricCounter(Base):
    """Cluster-wide counters for ``GET /metrics`` (see ``persistence.metrics_repository``).

    ``labels`` is the canonical JSON of the label set (sorted keys), part of the key."""

    __tablename__ = "metric_counters"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    labels: Mapped[str] = mapped_column(String(512), primary_key=True)
    value: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)


class ApiKey(Base):
    """An API key of a tenant. Only the key's SHA-256 is stored: the key itself is shown once,
    when ``ensemblehub keys create`` makes it. Keys are random (256 bits), so a fast hash is
    enough; a slow password hash would only slow every request down."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("key"))
    tenant: Mapped[str] = mapped_column(String(128), index=True, nullable=False)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    # the key's first characters, so a listed key can be recognised without revealing it
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    admin: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
