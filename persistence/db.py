"""Engine and session factory, plus the one-off helpers `ensemblehub migrate` needs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from persistence.settings import DatabaseSettings


class Database:
    """One engine + session factory per process."""

    def __init__(self, url: str, *, pool_size: int = 10, connect_timeout_s: float = 3.0) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size, connect_timeout_s=connect_timeout_s)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # each statement its own transaction: see statement()
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self.dialect_name = self.engine.dialect.name

    @classmethod
    def from_settings(cls, settings: DatabaseSettings) -> Database:
        return cls(
            settings.database_url, pool_size=settings.pool_size, connect_timeout_s=settings.connect_timeout_s
        )

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work is committed on success and rolled back on error."""
        with self.sessions() as session, session.begin():
            yield session

    @contextmanager
    def statement(self) -> Iterator[Connection]:
        """A connection in autocommit mode, for work that is one statement (atomic by itself).

        Why: in a transaction psycopg sends BEGIN before the first statement and COMMIT after
        it, each a round trip of its own; for a single statement they add nothing but those
        two round trips (two thirds of a claim's database time). Only for one statement: two
        statements on this connection commit separately."""
        with self._autocommit.connect() as conn:
            yield conn

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


def make_engine(url: str, *, pool_size: int = 10, connect_timeout_s: float = 3.0) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # WAL lets the API read while the in-process worker writes
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # no pre-ping: it costs a round trip on every checkout (a third of a submission's
        # database time). A connection broken by a Postgres restart raises a disconnect error
        # once; SQLAlchemy then invalidates the whole pool, the request answers 503 and the
        # next one reconnects.
        pool_pre_ping=False,
        pool_recycle=1800,
        connect_args={"connect_timeout": int(max(1, connect_timeout_s))},
    )


def create_database_if_missing(url: str) -> bool:
    """Create the Postgres database named in ``url`` when it does not exist. Returns True if created."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return False
    name = parsed.database
    admin = create_engine(
        parsed.set(database="postgres"), isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    try:
        with admin.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar()
            if exists:
                return False
            conn.execute(text(f'CREATE DATABASE "{name}"'))
            return True
    finally:
        admin.dispose()


def drop_database(url: str) -> None:
    parsed = make_url(url)
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
    finally:
        admin.dispose()


def upgrade_to_head(url: str) -> None:
    """Run the Alembic migrations (from the packaged migrations folder) against ``url``."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")


def alembic_config(url: str):  # type: ignore[no-untyped-def]
    from pathlib import Path

    from alembic.config import Config

    root = Path(__file__).resolve().parent.parent
    cfg = Config(str(root / "alembic.ini")) if (root / "alembic.ini").exists() else Config()
    cfg.set_main_option("script_location", str(root / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    cfg.attributes["url_set_by_caller"] = True
    return cfg
