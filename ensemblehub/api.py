"""``python -m ensemblehub.api [flags]`` and ``uvicorn ensemblehub.api:app``.

With uvicorn the app starts with the environment's settings and keeps the latest config
version (flags are only for ``python -m``, as the guide says).

``--workers N`` runs N API processes on one port (uvicorn's process manager, as
``uvicorn ensemblehub.api:app --workers N`` does): one Python process uses about one core,
so a machine with cores to spare accepts N times the submissions. Every process is a full
API; what they share lives in Postgres and Redis (jobs, config versions, API keys, rate
limits), and what each keeps for itself is only a cache that tolerates the others' writes (the
current config version and queue depth for a second). The embedded mode cannot run so: its
SQLite file, in-memory queue and worker belong to one process.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from api.settings import ApiSettings
    from ensemble_core.spec import EnsembleSpec


def build_parser() -> argparse.ArgumentParser:
    from api.server_flags import add_server_flags

    parser = argparse.ArgumentParser(
        prog="python -m ensemblehub.api",
        description="Run the Ensemble-Hub API server (see the user's guide).",
    )
    return add_server_flags(parser)


def main(argv: list[str] | None = None) -> int:
    from api.server_flags import FlagError, spec_from_args
    from api.settings import ApiSettings

    args = build_parser().parse_args(argv)
    try:
        spec = spec_from_args(args)
    except FlagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = ApiSettings()
    host = args.host or settings.host
    port = args.port or settings.port
    return serve(settings.model_copy(update={"host": host, "port": port}), spec, workers=args.workers)


def serve(settings: ApiSettings, spec: EnsembleSpec | None, *, workers: int = 1) -> int:
    """Serve the API on ``settings.host:port`` in ``workers`` processes (2: a bad combination)."""
    import uvicorn

    from api.app import create_app

    if workers < 1:
        print(f"error: --workers must be at least 1 (got {workers})", file=sys.stderr)
        return 2
    if workers == 1:
        uvicorn.run(
            create_app(settings, startup_spec=spec), host=settings.host, port=settings.port, log_level="info"
        )
        return 0
    problem = several_processes_problem(settings)
    if problem:
        print(f"error: --workers {workers}: {problem}", file=sys.stderr)
        return 2
    _store_startup_version(spec)
    # each process builds its app from the environment (`ensemblehub.api:app`), like
    # `uvicorn ensemblehub.api:app --workers N`; the host and port it announces come with it
    os.environ["ENSEMBLEHUB_HOST"], os.environ["ENSEMBLEHUB_PORT"] = settings.host, str(settings.port)
    with tempfile.TemporaryDirectory(prefix="ensemblehub-metrics-") as metrics_dir:
        # request metrics in files every process writes, so a scrape of any one reports all
        # (api/request_metrics.py); a folder the operator chose is kept
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir)
        uvicorn.run(
            "ensemblehub.api:app", host=settings.host, port=settings.port, workers=workers, log_level="info"
        )
    return 0


def several_processes_problem(settings: ApiSettings) -> str | None:
    """Why several API processes cannot serve this setup (None: they can)."""
    from jobqueue.settings import QueueSettings
    from persistence.settings import DatabaseSettings

    database_url = DatabaseSettings().database_url
    broker_url = QueueSettings().broker_url
    if settings.embedded or database_url.startswith("sqlite") or broker_url.startswith("memory://"):
        return (
            "the embedded mode (SQLite file, in-memory queue, worker inside the API process) runs in "
            "one process only; run PostgreSQL and Redis (ENSEMBLEHUB_DATABASE_URL, "
            "ENSEMBLEHUB_BROKER_URL) to serve from several processes"
        )
    return None


def _store_startup_version(spec: EnsembleSpec | None) -> None:
    """Store the flags' config version once, before the processes start: each would otherwise
    compare and append on its own, and racing appends could store it twice. The processes then
    keep the latest version, this one. As with one process, a database that does not answer
    yet is no reason not to start (``/status`` says what is down)."""
    import logging

    from api.services import config_service
    from persistence.db import Database
    from persistence.settings import DatabaseSettings

    log = logging.getLogger("api")
    db = Database.from_settings(DatabaseSettings())
    try:
        row = config_service.ensure_startup_version(db, spec)
        print(f"serving ensemble config version {row.version}", flush=True)
    except Exception as exc:  # noqa: BLE001 - start anyway, as one process does
        log.warning("could not set the start-up config version (database down?): %s", exc)
    finally:
        db.dispose()


def __getattr__(name: str) -> Any:
    # `uvicorn ensemblehub.api:app` asks for `app`; build it on first access so that
    # `python -m ensemblehub.api --help` does not construct an app it never uses
    if name == "app":
        from api.app import create_app

        app = create_app()
        globals()["app"] = app
        return app
    raise AttributeError(name)


if __name__ == "__main__":
    sys.exit(main())
