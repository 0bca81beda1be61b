"""``ensemblehub up``: everything on one machine, with one command.

Distributed mode (Postgres + Redis answer): migrate, then a worker process, Flower and the
API. Embedded mode (either is missing, or ``--embedded``): an SQLite file and a Celery worker
in the API's own process over the in-memory transport: the same code path through Celery and
SQLAlchemy, nothing to install.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ensemblehub import services


def probe_database(url: str) -> str | None:
    """None when the database server answers, else why not."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return None
    engine = create_engine(parsed.set(database="postgres"), connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except Exception as exc:  # noqa: BLE001
        return str(exc).splitlines()[0][:200]
    finally:
        engine.dispose()


def probe_broker(url: str) -> str | None:
    if not url.startswith(("redis://", "rediss://")):
        return None if url.startswith("memory://") else f"unsupported broker URL {url}"
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2).ping()
        return None
    except Exception as exc:  # noqa: BLE001
        return str(exc)[:200]


def run_up(args: argparse.Namespace) -> int:
    from api.server_flags import FlagError, spec_from_args
    from api.settings import ApiSettings
    from jobqueue.settings import QueueSettings
    from persistence.settings import DatabaseSettings

    try:
        spec = spec_from_args(args)
    except FlagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    db_url = DatabaseSettings().database_url
    broker_url = QueueSettings().broker_url
    embedded = args.embedded
    if not embedded:
        db_problem, broker_problem = probe_database(db_url), probe_broker(broker_url)
        if db_problem:
            print(f"PostgreSQL does not answer at {db_url}: {db_problem}", flush=True)
        if broker_problem:
            print(f"Redis does not answer at {broker_url}: {broker_problem}", flush=True)
        if db_problem or broker_problem:
            print("falling back to the embedded mode (SQLite file + in-process worker)", flush=True)
            embedded = True
    settings = ApiSettings()
    host, port = args.host or settings.host, args.port or settings.port
    if embedded:
        if args.workers != 1:
            print(
                f"error: --workers {args.workers}: the embedded mode runs its worker and queue inside "
                "the one API process; start PostgreSQL and Redis to serve from several processes",
                file=sys.stderr,
            )
            return 2
        return _run_embedded(args, spec, host, port)
    return _run_distributed(spec, db_url, host, port, workers=args.workers)


def _banner(host: str, port: int, flower: str | None) -> None:
    base = f"http://{host}:{port}"
    print("\nEnsemble-Hub is up:", flush=True)
    print(f"  API        {base}   (docs: {base}/docs, health: {base}/status)")
    print(
        "  Workers    models (threads pool, jobs batched), webhooks+maintenance, and beat (the job sweeper)"
    )
    if flower:
        print(f"  Flower     {flower}")
    print("First request to try:")
    print(
        f"  curl -s -X POST {base}/v1/chat/completions -H 'Content-Type: application/json' "
        '-d \'{"model": "ensemble", "prompt": "What is 2+2?", "max_tokens": 32}\''
    )
    print("Ctrl-C stops everything.\n", flush=True)


def _die_with_parent() -> None:
    """In each child: get SIGTERM when `up` dies, even by SIGKILL, so no worker is orphaned."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, preexec_fn=_die_with_parent)  # noqa: PLW1509 - only prctl, no locks


# the nice value of `up`'s model worker (ENSEMBLEHUB_WORKER_NICE overrides it)
UP_WORKER_NICE = 10


def _run_distributed(spec, db_url: str, host: str, port: int, *, workers: int = 1) -> int:  # type: ignore[no-untyped-def]
    from api.settings import ApiSettings
    from ensemblehub.api import serve
    from ensemblehub.cli import flower_basic_auth, worker_nice

    services.migrate(db_url)
    state_dir = Path(
        os.environ.get("ENSEMBLEHUB_DATA_DIR") or Path.home() / ".local" / "share" / "ensemblehub"
    )
    state_dir.mkdir(parents=True, exist_ok=True)
    # everything shares this machine's cores: the model worker decodes below the API's CPU
    # priority, so that accepting, streaming and /status stay quick while models keep the
    # cores busy (it still gets every cycle the API leaves; docs/benchmarks.md "Service")
    nice = worker_nice(None, default=UP_WORKER_NICE)
    children: list[subprocess.Popen[bytes]] = [
        # the model worker runs several jobs at once, their decode steps batched ...
        _spawn(services.worker_argv(queues="models", name=f"ensemblehub-models@%h.{os.getpid()}", nice=nice)),
        # ... webhooks and the sweeper get their own worker and never wait behind the models
        _spawn(services.worker_argv(queues="webhooks,maintenance", name=f"ensemblehub-io@%h.{os.getpid()}")),
        _spawn(services.beat_argv(str(state_dir))),
    ]
    flower_port = int(os.environ.get("ENSEMBLEHUB_FLOWER_PORT", "5555"))
    auth = flower_basic_auth()
    children.append(_spawn(services.flower_argv(port=flower_port, address="127.0.0.1", basic_auth=auth)))
    _banner(host, port, f"http://127.0.0.1:{flower_port}  (basic auth user: {auth.split(':', 1)[0]})")
    try:
        # the app knows where it listens: the start-up notice of the open (keyless) mode says it
        settings = ApiSettings().model_copy(update={"host": host, "port": port})
        return serve(settings, spec, workers=workers)
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()


def _run_embedded(args: argparse.Namespace, spec, host: str, port: int) -> int:  # type: ignore[no-untyped-def]
    import uvicorn

    from ensemblehub.embedded import build_embedded

    data_dir = Path(
        args.data_dir
        or os.environ.get("ENSEMBLEHUB_DATA_DIR")
        or Path.home() / ".local" / "share" / "ensemblehub"
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    app, worker = build_embedded(data_dir / "embedded.sqlite", startup_spec=spec)
    print(
        f"embedded mode: database {data_dir / 'embedded.sqlite'}, worker in this process; Flower needs Redis, so it is off",
        flush=True,
    )
    _banner(host, port, None)
    stop = threading.Event()
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        stop.set()
        worker.stop()
    return 0
