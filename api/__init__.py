"""FastAPI service: wire schemas, use-case services, thin routes, settings, CLI flags.

The API process never imports torch: it validates configs with ``ensemble_core.spec`` and
``ensemble_core.methods`` only, and sends tasks to workers by name.
"""
