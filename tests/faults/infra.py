"""Private, killable services for the fault tests, all on loopback.

The shared Redis (6379) and the shared Postgres cluster (5432) are never restarted: a test
that kills Redis gets its own ``redis-server`` on a free port, and a test that restarts
Postgres gets its own cluster (``initdb`` into a temporary directory, run as the ``postgres``
user). The stack on top is the real one: API over HTTP, a Celery worker for the models, one
for webhooks and the sweeper, and Celery beat, exactly as ``ensemblehub up`` runs them.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from ensemblehub.services import worker_argv
from tests import services
from tests.conftest import WEBHOOK_SECRET

# how the sweeper runs in the fault tests: often, and quick to call a worker dead
FAULT_ENV = {
    "ENSEMBLEHUB_SWEEP_INTERVAL_S": "1",
    "ENSEMBLEHUB_UNSENT_GRACE_S": "1",
    "ENSEMBLEHUB_JOB_DEAD_AFTER_S": "10",
    "ENSEMBLEHUB_HEARTBEAT_INTERVAL_S": "1",
    "ENSEMBLEHUB_WEBHOOK_SECRET": WEBHOOK_SECRET,
    "ENSEMBLEHUB_WEBHOOK_ALLOWLIST": "127.0.0.1",
    "ENSEMBLEHUB_OUTBOUND_ALLOWLIST": "127.0.0.1",
    "ENSEMBLEHUB_WEBHOOK_RETRY_SCHEDULE_S": "0.5,1,2,3,5,8",
    # a POST gives up after 5 s; an attempt `sending` for 6 s lost its worker (kept longer
    # than the timeout, as in production, so a live slow send is not doubled)
    "ENSEMBLEHUB_WEBHOOK_TIMEOUT_S": "5",
    "ENSEMBLEHUB_WEBHOOK_STUCK_AFTER_S": "6",
    "ENSEMBLEHUB_DATABASE_RETRY_S": "8",
    # the load tests send a few hundred requests a minute from one tenant
    "ENSEMBLEHUB_RATE_LIMIT_REQUESTS": "100000",
}


class RedisServer:
    """A ``redis-server`` of our own, without persistence: killing it loses every message."""

    def __init__(self, log_dir: Path) -> None:
        self.port = services.free_port()
        self.log_dir = log_dir
        self.proc: services.Process | None = None
        self.starts = 0

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.starts += 1
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]
        self.proc = services.Process(argv, dict(os.environ), self.log_dir / f"redis-{self.starts}.log")
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url(), socket_connect_timeout=0.5).ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline or not self.proc.alive():
                    raise RuntimeError(f"redis-server did not start:\n{self.proc.log()}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save; the data is gone."""
        assert self.proc is not None
        self.proc.proc.send_signal(signal.SIGKILL)
        self.proc.proc.wait()
        self.proc.stop()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


class PostgresServer:
    """A Postgres cluster of our own in a temporary directory, run as the ``postgres`` user."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ehub-pg-"))
        shutil.chown(self.root, "postgres", "postgres")
        self.data = self.root / "data"
        self.port = services.free_port()
        self.bin = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])
        self._as_postgres(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync"]
        )

    @staticmethod
    def available() -> bool:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return False
        return bool(glob.glob("/usr/lib/postgresql/*/bin/initdb")) and shutil.which("runuser") is not None

    def url(self, database: str = "ehub_faults") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _as_postgres(self, argv: list[str]) -> None:
        out = subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {out.stdout}\n{out.stderr}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-o",
                options,
                "-l",
                str(self.root / "log"),
                "-w",
            ]
            + ["start"]
        )

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except RuntimeError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class FaultStack:
    base_url: str
    database_url: str
    broker_url: str
    env: dict[str, str]
    log_dir: Path
    api: services.Process
    models_worker: services.Process
    io_worker: services.Process
    beat: services.Process
    keys: dict[str, str] = field(default_factory=dict)  # tenant -> key ("ops" is an admin)
    extra: list[services.Process] = field(default_factory=list)
    _worker_count: int = 1

    def client(self, tenant: str = "alice", timeout: float = 120) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            headers={"Authorization": f"Bearer {self.keys[tenant]}"},
        )

    def restart_models_worker(self) -> services.Process:
        self._worker_count += 1
        self.models_worker = start_worker(self.env, self.log_dir, f"models{self._worker_count}", "models")
        return self.models_worker

    def restart_io_worker(self) -> services.Process:
        self._worker_count += 1
        self.io_worker = start_worker(
            self.env, self.log_dir, f"io{self._worker_count}", "webhooks,maintenance"
        )
        return self.io_worker

    def processes(self) -> list[services.Process]:
        return [self.api, self.models_worker, self.io_worker, self.beat, *self.extra]

    def logs(self) -> str:
        return "\n".join(f"---- {p.log_path.name} ----\n{p.log()[-3000:]}" for p in self.processes())

    def stop(self) -> None:
        for proc in self.processes():
            proc.stop()


def start_worker(env: dict[str, str], log_dir: Path, name: str, queues: str) -> services.Process:
    argv = worker_argv(queues=queues, name=f"{name}-{os.getpid()}@%h", concurrency=4)
    return services.Process(argv, env, log_dir / f"worker-{name}.log")


def create_key(env: dict[str, str], tenant: str, *, admin: bool = False) -> str:
    """Through the documented command: ``ensemblehub keys create --tenant NAME [--admin]``."""
    argv = [sys.executable, "-m", "ensemblehub.cli", "keys", "create", "--tenant", tenant, "--json"]
    out = subprocess.run(
        argv + (["--admin"] if admin else []), env=env, cwd=services.ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return str(json.loads(out.stdout)["key"])


def start_stack(
    database_url: str,
    broker_url: str,
    tiny_specs: list[dict[str, Any]],
    log_dir: Path,
    *,
    tenants: tuple[str, ...] = ("alice", "bob"),
    extra_env: dict[str, str] | None = None,
) -> FaultStack:
    env = services.service_env(database_url, broker_url, **FAULT_ENV, **(extra_env or {}))
    keys = {"ops": create_key(env, "ops", admin=True)}
    keys.update({tenant: create_key(env, tenant) for tenant in tenants})
    models = start_worker(env, log_dir, "models1", "models")
    io = start_worker(env, log_dir, "io", "webhooks,maintenance")
    beat = services.Process(
        [sys.executable, "-m", "celery", "-A", "workers.app", "beat", "--loglevel", "INFO"]
        + ["--schedule", str(log_dir / "celerybeat-schedule")],
        env,
        log_dir / "beat.log",
    )
    flags = ["--model_specs", json.dumps(tiny_specs), "--model_selection_method", "all"]
    flags += ["--ensemble_method", "loop", "--max_rounds", "2"]
    api, base = services.start_api(env, log_dir, flags)
    stack = FaultStack(base, database_url, broker_url, env, log_dir, api, models, io, beat, keys)
    try:
        wait_until(lambda: _models_worker_seen(stack), 90, "no heartbeat of the models worker")
    except BaseException:
        stack.stop()
        raise
    return stack


def _models_worker_seen(stack: FaultStack) -> bool:
    if not stack.models_worker.alive():
        raise RuntimeError(f"worker exited:\n{stack.models_worker.log()}")
    # both workers (models; webhooks + sweeper) write their heartbeat once they are up; the
    # worker list is shown to an admin key only
    admin = {"Authorization": f"Bearer {stack.keys['ops']}"}
    status = httpx.get(stack.base_url + "/status", headers=admin, timeout=5).json()
    return len(status.get("workers") or []) >= 2


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} (after {timeout} s)")
        time.sleep(interval)


REPORTS: list[str] = []


def report(title: str, **figures: Any) -> None:
    """What a fault test tried and what was lost: printed at the end of the pytest run (see
    ``tests/faults/conftest.py``) and recorded in ``docs/reliability.md``."""
    width = max(len(k) for k in figures)
    lines = [f"[fault] {title}"] + [f"  {k.replace('_', ' '):<{width}}  {v}" for k, v in figures.items()]
    REPORTS.append("\n".join(lines))
    print(REPORTS[-1], flush=True)
