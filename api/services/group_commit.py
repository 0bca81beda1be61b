"""Group commit: concurrent submissions of one API process share one INSERT, one COMMIT and
one broker pipeline.

A submission costs round trips of its own (the INSERT and its COMMIT, the broker's LPUSH) and
the driver work around each; under load most of the API's time went there. Here a
submitting thread hands its job row over and waits; one committer thread takes every row
waiting (at most ``max_rows``), stores them in one multi-row INSERT and one COMMIT, sends their
tasks in one Redis pipeline, and wakes each submitter with its outcome. The groups form by
themselves: while one group is written, the next one gathers; the committer also waits up to
``linger_s`` for company before it writes, which costs a submission at most that much latency.
It lingers only while submissions come together (the last group had more than one row): a
lone submission (sequential requests) is written at once, and the first of a burst too,
while the rest of the burst gathers behind it.

What a submitter may rely on:

- it is answered only after its row is committed: a 202 means the job is stored;
- one bad row does not sink its group: when the group's INSERT fails for a reason of its
  rows (a duplicate ``Idempotency-Key``, a value too long), the rows are inserted again one by
  one, each in a transaction of its own; the good ones are stored, the bad one gets its own
  error (the caller handles an ``IntegrityError`` as it always did). A database that does not
  answer fails the whole group at once (every row would fail the same way);
- tasks are sent only after the commit. A failed pipeline leaves its whole group "not sent"
  (the broker may or may not hold each message): the caller then keeps the job for the
  sweeper (``workers/sweeper.py`` sends queued jobs that have no ``enqueued_at`` after a short
  grace; a duplicate message is harmless, the claim is conditional) or withdraws it and
  answers 503 (``job_service.unsent``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import insert

from api.errors import ServiceUnavailable
from persistence.db import Database
from persistence.models import Job

log = logging.getLogger(__name__)

# errors that say "the database is unreachable", not "this row is wrong": retrying the group
# row by row would only wait for each row's connect timeout in turn
_DATABASE_DOWN = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)

# rows SQLAlchemy's insertmanyvalues sends as one INSERT statement (its default page size)
_ONE_STATEMENT_ROWS = 1000


@dataclass(frozen=True)
class Outcome:
    """What became of one submitted row: stored (always, or ``submit`` raised) and sent or not."""

    job: Job
    sent: bool
    publish_error: BaseException | None = None


@dataclass
class _Pending:
    row: dict[str, Any]
    queue: str
    future: Future[Outcome]


Publish = Callable[[list[str], Mapping[str, str]], None]


class GroupCommit:
    """One per API process and database. ``publish(job_ids, queues)`` sends the tasks of a
    committed group (``queues`` maps a job id to its Celery queue). ``on_group(rows)`` is told
    the size of every group committed (the ``/metrics`` histogram)."""

    def __init__(
        self,
        db: Database,
        publish: Publish,
        *,
        max_rows: int = 100,
        linger_s: float = 0.001,
        on_group: Callable[[int], None] | None = None,
    ) -> None:
        self._db, self._publish = db, publish
        self.max_rows, self.linger_s = max(1, max_rows), max(0.0, linger_s)
        self.on_group = on_group
        self._pending: list[_Pending] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._had_company = True  # the last group had more than one row (at first: unknown)

    def submit(self, row: dict[str, Any], *, queue: str) -> Outcome:
        """Store ``row`` (the job's column values, ``id`` included) with whatever else is being
        submitted, send its task to ``queue``, and return once both are done. Raises the
        row's own database error (e.g. ``IntegrityError`` for a reused idempotency key)."""
        pending = _Pending(row, queue, Future())
        with self._cond:
            if self._closed:
                raise ServiceUnavailable("this API process is shutting down; retry", code="shutting_down")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
                self._thread.start()
            self._pending.append(pending)
            if len(self._pending) in (1, self.max_rows):  # wake the committer only when it waits for these
                self._cond.notify()
        return pending.future.result()

    def close(self) -> None:
        """Commit what is waiting, then stop the committer (the app's shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                # gather for up to linger_s, or until a full group waits; a lone submission
                # after lone ones is not kept waiting for company that does not come
                deadline = time.monotonic() + self.linger_s
                while self._had_company and len(self._pending) < self.max_rows and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                group, self._pending = self._pending[: self.max_rows], self._pending[self.max_rows :]
                self._had_company = len(group) > 1
            try:
                self._commit_and_send(group)
            except BaseException as exc:  # noqa: BLE001 - every submitter must be answered
                log.exception("group commit of %d submissions failed", len(group))
                for p in group:
                    if not p.future.done():
                        p.future.set_exception(exc)

    def _commit_and_send(self, group: list[_Pending]) -> None:
        stored = self._insert(group)
        if not stored:
            return
        error: BaseException | None = None
        try:
            self._publish([p.row["id"] for p in stored], {p.row["id"]: p.queue for p in stored})
        except Exception as exc:  # noqa: BLE001 - the caller decides: sweeper or 503
            log.warning("sending %d committed jobs failed: %s", len(stored), exc)
            error = exc
        for p in stored:
            p.future.set_result(Outcome(Job(**p.row), sent=error is None, publish_error=error))

    def _insert(self, group: list[_Pending]) -> list[_Pending]:
        """Insert the group; returns the rows stored (the others' futures hold their error)."""
        try:
            self._insert_rows([p.row for p in group])
            return group
        except _DATABASE_DOWN as exc:
            for p in group:
                p.future.set_exception(exc)
            return []
        except Exception as exc:
            if len(group) == 1:
                group[0].future.set_exception(exc)
                return []
            log.info("a group of %d submissions failed (%s); inserting them one by one", len(group), exc)
        stored = []
        for p in group:
            try:
                self._insert_rows([p.row])
                stored.append(p)
            except Exception as exc:  # noqa: BLE001 - this row's own error, for its submitter
                p.future.set_exception(exc)
        return stored

    def _insert_rows(self, rows: list[dict[str, Any]]) -> None:
        # one multi-row INSERT (SQLAlchemy's insertmanyvalues). On Postgres a group of at most
        # max_rows rows is one statement, atomic by itself: it runs on an autocommit
        # connection, one round trip instead of three (BEGIN, INSERT, COMMIT). Elsewhere (SQLite,
        # or a group past one statement's page), a transaction keeps the group all or nothing,
        # which the row-by-row retry relies on
        alone = self._db.dialect_name == "postgresql" and len(rows) <= _ONE_STATEMENT_ROWS
        with self._db.statement() if alone else self._db.engine.begin() as conn:
            conn.execute(insert(Job).returning(Job.id), rows)
        if self.on_group is not None:
            self.on_group(len(rows))
