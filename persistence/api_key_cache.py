"""API-key lookups cached in one process, dropped the moment any key changes.

Every request used to ask Postgres for its key (and, without one, whether any key exists):
a tenth of a submission's CPU in the API. Here the answers are kept per process, and a
listener thread holds ``LISTEN ensemblehub_api_keys``: a trigger on ``api_keys`` (migration
0006) notifies on every INSERT, UPDATE, DELETE or TRUNCATE, however it is made (``ensemblehub
keys revoke``, SQL by hand), and the listener drops the whole cache when the notification
arrives, a few milliseconds after the change commits.

The cache answers only while the listener is connected and has found the trigger; otherwise
(SQLite, a database without migration 0006, the listener's connection lost and not yet back)
every lookup goes to the database, as before. A lookup that was running while the cache was
dropped does not store its (possibly stale) answer. As a last guard each answer expires after
``ttl_s``, and the listener pings its connection every ``ping_s`` so that a connection dead
without an error is noticed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

CHANNEL = "ensemblehub_api_keys"
TRIGGER = "ensemblehub_api_keys_changed"

_MISSING = object()


class ApiKeyCache:
    """``lookup(key, load)``: the cached answer for ``key``, else ``load()`` (stored while the
    listener is live). ``key`` is the token's hash, or ``""`` for "no token"."""

    def __init__(
        self, database_url: str, *, ttl_s: float = 10.0, ping_s: float = 2.0, max_entries: int = 10_000
    ) -> None:
        self._url = database_url
        self.ttl_s, self.ping_s, self.max_entries = ttl_s, ping_s, max_entries
        self._entries: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()
        self._generation = 0
        self._live = False
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        if make_url(database_url).get_backend_name() == "postgresql" and ttl_s > 0:
            self._thread = threading.Thread(target=self._listen, name="api-key-listener", daemon=True)
            self._thread.start()

    @property
    def live(self) -> bool:
        """Whether answers are being cached (the listener is connected and the trigger exists)."""
        return self._live

    def get(self, key: str) -> Any:
        """The cached answer, or ``MISSING``."""
        entry = self._entries.get(key)
        if entry is None or not self._live or entry[0] < time.monotonic():
            return _MISSING
        return entry[1]

    def lookup(self, key: str, load: Callable[[], Any]) -> Any:
        cached = self.get(key)
        if cached is not _MISSING:
            return cached
        generation = self._generation
        value = load()
        with self._lock:
            # not when the cache was dropped meanwhile: ``value`` may predate the change
            if self._live and generation == self._generation:
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()  # a flood of made-up keys must not grow memory
                self._entries[key] = (time.monotonic() + self.ttl_s, value)
        return value

    def invalidate(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries = {}

    def close(self) -> None:
        """Stop caching; the listener closes its connection within ``ping_s``."""
        self._closed.set()
        self._set_live(False)

    def _set_live(self, live: bool) -> None:
        with self._lock:
            self._live = live
            self._generation += 1
            self._entries = {}

    def _listen(self) -> None:
        import psycopg

        conninfo = make_url(self._url).set(drivername="postgresql").render_as_string(hide_password=False)
        warned = False
        while not self._closed.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True, connect_timeout=3) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    found = conn.execute("SELECT 1 FROM pg_trigger WHERE tgname = %s", (TRIGGER,)).fetchone()
                    if found is None:
                        log.info("api_keys has no change trigger (migration 0006): key lookups not cached")
                        return
                    self._set_live(True)
                    if warned:
                        log.info("API-key change listener connected again; key lookups cached")
                    warned = False
                    while not self._closed.is_set():
                        for _ in conn.notifies(timeout=self.ping_s, stop_after=1):
                            self.invalidate()
                        conn.execute("SELECT 1")  # a dead connection raises here
            except Exception as exc:  # noqa: BLE001 - lookups go to the database until back
                self._set_live(False)
                if self._closed.is_set():
                    break
                if not warned:
                    log.warning("API-key change listener lost (%s); key lookups not cached until back", exc)
                    warned = True
                self._closed.wait(1.0)
        self._set_live(False)


MISSING = _MISSING
