"""``ensemblehub worker --nice N``: the worker and every thread it starts run at nice N, below
the API on a machine they share (``ensemblehub up`` starts its model worker at 10)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ensemblehub.services import worker_argv
from tests import services


def _nice_values(pid: int) -> dict[str, int]:
    values = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        # the fields after the command's closing parenthesis: state is field 3, nice field 19
        values[task.name] = int(stat[stat.rindex(")") + 2 :].split()[16])
    return values


def test_a_worker_started_with_nice_runs_every_thread_at_it(tmp_path):
    with services.migrated_database() as db_url, services.private_redis_db() as broker:
        env = services.service_env(db_url, broker)
        argv = [sys.executable, "-m", "ensemblehub.cli", "worker", "--nice", "7", "--concurrency", "2"]
        worker = services.Process(argv, env, tmp_path / "worker.log")
        try:
            deadline = time.monotonic() + 60
            while "ready" not in worker.log():  # Celery's "celery@... ready." once its pool runs
                assert worker.alive() and time.monotonic() < deadline, worker.log()
                time.sleep(0.2)
            nice = _nice_values(worker.proc.pid)
            assert len(nice) > 2 and set(nice.values()) == {7}, nice
        finally:
            worker.stop()


def test_worker_argv_puts_nice_in_front_only_when_asked():
    assert worker_argv(nice=10)[1:3] == ["-n", "10"] and worker_argv(nice=10)[0].endswith("nice")
    assert worker_argv()[0] == sys.executable
