"""The documented entry points only: ``python -m ensemblehub.api``, ``ensemblehub.api:app``
and the ``ensemblehub`` console script. This package is the composition root: it is the one
place that may wire the API and the workers together (embedded mode)."""
