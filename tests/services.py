"""Real services for tests: a fresh migrated Postgres database, a private Redis db number,
real worker and API processes. Nothing here fakes the queue or the database."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis

from ensemblehub.services import worker_argv

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("ENSEMBLEHUB_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_BASE = os.environ.get("ENSEMBLEHUB_TEST_REDIS", "redis://127.0.0.1:6379")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def migrated_database() -> Iterator[str]:
    from persistence.db import create_database_if_missing, drop_database, upgrade_to_head

    url = f"{PG_ADMIN_URL}/ehub_test_{uuid.uuid4().hex[:10]}"
    create_database_if_missing(url)
    try:
        upgrade_to_head(url)
        yield url
    finally:
        drop_database(url)


@contextmanager
def migrated_db() -> Iterator[Any]:
    """A :class:`persistence.db.Database` on a database of its own (:func:`migrated_database`),
    disposed at the end."""
    from persistence.db import Database

    with migrated_database() as url:
        database = Database(url)
        try:
            yield database
        finally:
            database.dispose()


@contextmanager
def private_redis_db() -> Iterator[str]:
    """Claim a Redis db number 1..15 nobody else is using (never db 0: a stray worker may
    listen there), flush it, and give it back at the end."""
    token = uuid.uuid4().hex
    for number in range(1, 16):
        client = redis.Redis.from_url(f"{REDIS_BASE}/{number}")
        if client.set("ensemblehub:test-lock", token, nx=True, ex=3600):
            client.flushdb()
            client.set("ensemblehub:test-lock", token, ex=3600)
            try:
                yield f"{REDIS_BASE}/{number}"
            finally:
                client.flushdb()
            return
    raise RuntimeError("no free Redis db number among 1..15")


def service_env(database_url: str, broker_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ENSEMBLEHUB_DATABASE_URL=database_url,
        ENSEMBLEHUB_BROKER_URL=broker_url,
        ENSEMBLEHUB_HEARTBEAT_INTERVAL_S="1",
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.update(extra)
    return env


class Process:
    """A child process whose output goes to a log file shown when a test fails."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def start_worker(env: dict[str, str], log_dir: Path, name: str = "w1") -> Process:
    # the same command line as `ensemblehub worker`, with a small thread pool
    argv = worker_argv(
        queues="models,webhooks,maintenance",
        name=f"{name}-{uuid.uuid4().hex[:6]}@%h",
        concurrency=int(env.get("ENSEMBLEHUB_CONCURRENCY", "4")),
        nice=int(env.get("ENSEMBLEHUB_WORKER_NICE", "0")),
    )
    return Process(argv, env, log_dir / f"worker-{name}.log")


def start_api(
    env: dict[str, str], log_dir: Path, flags: list[str], port: int | None = None
) -> tuple[Process, str]:
    port = port or free_port()
    argv = [sys.executable, "-m", "ensemblehub.api", "--port", str(port), *flags]
    proc = Process(argv, env, log_dir / f"api-{port}.log")
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/", proc)
    return proc, base


def wait_http(url: str, proc: Process | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"process exited early:\n{proc.log()}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout}s" + (f"\n{proc.log()}" if proc else ""))


def wait_for_worker(base_url: str, worker: Process, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not worker.alive():
            raise RuntimeError(f"worker exited:\n{worker.log()}")
        # the count, which /status shows to anyone (the workers themselves only to an admin)
        body = httpx.get(base_url + "/status", timeout=5).json()
        if body["checks"]["workers"]["count"]:
            return
        time.sleep(0.3)
    raise TimeoutError(f"no worker heartbeat in {timeout}s\n{worker.log()}")


@contextmanager
def queue_paused(broker_url: str, queue: str = "models") -> Iterator[None]:
    """The worker stops taking tasks from ``queue`` (Celery remote control), so new tasks wait
    in Redis for as long as a test needs; it takes them again on exit."""
    from celery import Celery

    control = Celery(broker=broker_url).control
    # limit=1: the stack runs one worker; without a limit the call waits out the whole timeout
    assert control.cancel_consumer(queue, reply=True, timeout=15, limit=1), "no worker answered"
    try:
        yield
    finally:
        control.add_consumer(queue, reply=True, timeout=15, limit=1)
