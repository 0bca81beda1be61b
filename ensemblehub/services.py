"""Starting the pieces: migrations, a worker process, Flower. Used by the CLI and `up`."""

from __future__ import annotations

import os
import shutil
import sys

from jobqueue.contract import MODELS_QUEUE
from jobqueue.routing import parse_members, queues_held
from persistence.db import create_database_if_missing, upgrade_to_head
from persistence.settings import DatabaseSettings


def migrate(url: str) -> None:
    created = create_database_if_missing(url)
    if created:
        print(f"created database {url.rsplit('/', 1)[-1]}", flush=True)
    upgrade_to_head(url)


def migrate_command() -> int:
    url = DatabaseSettings().database_url
    migrate(url)
    print("database is at the latest migration", flush=True)
    return 0


def worker_argv(
    *,
    queues: str = "models,webhooks,maintenance",
    name: str | None = None,
    loglevel: str = "INFO",
    concurrency: int | None = None,
    nice: int = 0,
) -> list[str]:
    """``nice``: the worker's CPU priority below the API's (``nice -n``; ``ensemblehub.cli``'s
    ``worker_nice`` reads the flag and ENSEMBLEHUB_WORKER_NICE)."""
    # one process holds the models (one worker per GPU); a pool of threads runs several jobs at
    # once so that their decode steps share forward passes (ensemble_core.backends.hf_batching);
    # no -E: Flower turns the task events on while it runs (jobqueue.celery_config)
    if concurrency is None:
        from workers.settings import WorkerSettings

        concurrency = WorkerSettings().concurrency
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        str(concurrency),
        "-Q",
        queues,
        "--loglevel",
        loglevel,
    ]
    argv += ["-n", name or f"ensemblehub@%h.{os.getpid()}"]
    if nice:
        # nice(1) execs the worker (same pid); every thread it starts inherits the priority
        argv = [shutil.which("nice") or "nice", "-n", str(nice), *argv]
    return argv


def beat_argv(schedule_dir: str) -> list[str]:
    """Celery beat: schedules the sweeper (one beat per deployment)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "beat",
        "--loglevel",
        "INFO",
        "--schedule",
        os.path.join(schedule_dir, "celerybeat-schedule"),
    ]


def run_worker(
    *,
    queues: str,
    name: str | None,
    loglevel: str,
    concurrency: int | None = None,
    members: str | None = None,
    config_version: int | None = None,
    nice: int = 0,
) -> int:
    if members is not None or config_version is not None:
        try:
            held = parse_members(members) if members is not None else version_members(config_version or 0)
            queues = member_worker_queues(queues, held)
        except ValueError as exc:
            print(f"ensemblehub worker: {exc}", file=sys.stderr, flush=True)
            return 2
        # the Celery worker process (this one, after exec) reads them in WorkerSettings
        os.environ["ENSEMBLEHUB_WORKER_MEMBERS"] = ",".join(held)
        if config_version is not None:
            os.environ["ENSEMBLEHUB_WORKER_CONFIG_VERSION"] = str(config_version)
    return _become(
        worker_argv(queues=queues, name=name, loglevel=loglevel, concurrency=concurrency, nice=nice)
    )


def member_worker_queues(queues: str, members: list[str]) -> str:
    """The -Q list of a worker holding ``members``: the queues of their member sets in place of
    the default ``models`` queue (webhooks, maintenance and any other queue named stay)."""
    others = [q for q in parse_members(queues) if q != MODELS_QUEUE]
    return ",".join(queues_held(members) + others)


def version_members(version_id: int) -> list[str]:
    """The member names of stored config version ``version_id`` (``--config-version N``)."""
    from ensemble_core.spec import EnsembleSpec
    from persistence import repository
    from persistence.db import Database

    db = Database.from_settings(DatabaseSettings())
    try:
        with db.transaction() as session:
            row = repository.get_config_version(session, version_id)
            spec = None if row is None else EnsembleSpec.model_validate(row.spec)
    finally:
        db.dispose()
    if spec is None:
        raise ValueError(f"config version {version_id} does not exist")
    return [m.display_name for m in spec.model_specs]


def flower_argv(*, port: int | None, address: str, basic_auth: str) -> list[str]:
    port = port or int(os.environ.get("ENSEMBLEHUB_FLOWER_PORT", "5555"))
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "flower",
        f"--port={port}",
        f"--address={address}",
        f"--basic_auth={basic_auth}",
    ]


def run_flower(*, port: int | None, address: str, basic_auth: str) -> int:
    _enable_task_events()
    return _become(flower_argv(port=port, address=address, basic_auth=basic_auth))


def _enable_task_events() -> None:
    """Turn on the task events of the workers running now, at once: workers start without
    them (``jobqueue.celery_config``) and Flower's own ``enable_events`` first fires 5 s after
    it starts (then every 5 s, which reaches workers started later). A broadcast nobody
    answers: a broker that is down is Flower's to report, not a reason not to start it."""
    from jobqueue.celery_config import make_celery
    from jobqueue.settings import QueueSettings

    try:
        make_celery(QueueSettings()).control.enable_events()
    except Exception as exc:  # noqa: BLE001
        print(f"could not enable the workers' task events now ({exc}); Flower retries every 5 s", flush=True)


def _become(argv: list[str]) -> int:
    """Replace this process with ``argv`` (same pid): a supervisor's SIGTERM or kill reaches
    the worker or Flower itself, never an intermediate process that dies and orphans it."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)
    return 0  # not reached
