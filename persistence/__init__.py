"""Postgres (or SQLite in embedded mode) through SQLAlchemy 2: rows, sessions, repository functions.

Knows nothing of FastAPI or Celery. Repository functions never commit: the caller owns the
transaction (and enqueues only after commit).
"""
