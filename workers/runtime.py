"""Process-wide state of a worker: database, event bus, model pool, heartbeat, job watch.

Created lazily on first use in the worker process (never at import and never in
worker_process_init, which Celery kills after 4 s): loading models can take a while.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from ensemble_core.pool import ModelPool
from jobqueue.events import event_bus_for
from jobqueue.settings import QueueSettings
from persistence import repository
from persistence.db import Database
from persistence.settings import DatabaseSettings
from workers.job_watch import JobWatch
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)


class ConfigVersionCache:
    """Config version specs by id, read once per process: the rows are append-only and never
    updated, so a cached spec cannot go stale. Bounded (least recently used goes first) for a
    long-lived worker that sees many versions."""

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._specs: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session: Session, version_id: int) -> dict[str, Any] | None:
        with self._lock:
            spec = self._specs.get(version_id)
            if spec is not None:
                self._specs.move_to_end(version_id)
                return spec
        row = repository.get_config_version(session, version_id)
        if row is None:
            return None
        spec = dict(row.spec)
        with self._lock:
            self._specs[version_id] = spec
            while len(self._specs) > self._size:
                self._specs.popitem(last=False)
        return spec


@dataclass
class WorkerRuntime:
    db: Database
    bus: Any
    pool: ModelPool
    settings: WorkerSettings
    hostname: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    # the Celery queues this worker reads, set once it is ready (workers.app), for /status
    queues: list[str] | None = None
    config_versions: ConfigVersionCache = field(default_factory=ConfigVersionCache)
    _stop: threading.Event = field(default_factory=threading.Event)
    _heartbeat: threading.Thread | None = None
    _beat_lock: threading.Lock = field(default_factory=threading.Lock)
    _watch: JobWatch | None = None
    _watch_lock: threading.Lock = field(default_factory=threading.Lock)
    _frozen_at_loads: int = -1
    _freeze_lock: threading.Lock = field(default_factory=threading.Lock)

    def freeze_heap(self) -> None:
        """Move what the process holds now (imports, loaded models) out of the garbage
        collector's sight, once after start-up and once after each model load (``gc.freeze``).
        Why: a model load leaves ~600,000 objects that live as long as the process, and each
        full collection walked them all, ~150 ms, in the middle of whichever job allocated at
        that moment (seen as the p99 of bench/overhead.py). Frozen objects are still freed when
        their last reference goes; only a cycle among them is kept, and models are never
        unloaded while the worker runs."""
        if len(self.pool) == self._frozen_at_loads:
            return  # after every job: nothing loaded since the last freeze
        with self._freeze_lock:
            loads = len(self.pool)
            if loads == self._frozen_at_loads:
                return
            self._frozen_at_loads = loads
            gc.collect()
            gc.freeze()

    def job_watch(self) -> JobWatch:
        """The process's watch over its running jobs, started by the first job (which pays its
        subscription once); every later job only registers."""
        with self._watch_lock:
            if self._watch is None:
                self._watch = JobWatch(
                    self.db, self.bus, heartbeat_interval_s=self.settings.heartbeat_interval_s
                )
                self._watch.start()
            return self._watch

    def start_heartbeat(self) -> None:
        if self._heartbeat is not None:
            return
        self._heartbeat = threading.Thread(target=self._beat, name="worker-heartbeat", daemon=True)
        self._heartbeat.start()

    def beat_once(self) -> None:
        # one beat at a time: the first row is an INSERT, and the worker's ready signal beats too
        with self._beat_lock, self.db.transaction() as session:
            repository.upsert_worker_heartbeat(
                session,
                hostname=self.hostname,
                pid=os.getpid(),
                loaded_models=self.pool.loaded(),
                members=self.settings.held_members(),
                queues=self.queues,
            )

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat_once()
            except Exception as exc:  # noqa: BLE001 - a database blip must not kill the heartbeat
                log.warning("worker heartbeat failed: %s", exc)
            self._stop.wait(self.settings.heartbeat_interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        try:
            with self.db.transaction() as session:
                repository.remove_worker(session, self.hostname)
        except Exception:  # noqa: BLE001
            pass


_runtime: WorkerRuntime | None = None
_lock = threading.Lock()


def get_runtime() -> WorkerRuntime:
    global _runtime
    with _lock:
        if _runtime is None:
            settings = WorkerSettings()
            _runtime = WorkerRuntime(
                db=Database.from_settings(DatabaseSettings()),
                bus=event_bus_for(QueueSettings().broker_url),
                pool=ModelPool(cache_dir=settings.model_cache_dir),
                settings=settings,
            )
            _runtime.start_heartbeat()
        return _runtime


def reset_runtime() -> None:
    """For forked children: connections must not be shared across processes."""
    global _runtime
    with _lock:
        _runtime = None
