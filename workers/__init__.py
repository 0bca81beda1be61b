"""Celery workers: thin tasks over persistence + ensemble_core. Models load lazily per process."""
