"""Ensemble-vs-single evaluation (``ensemblehub eval``): what the ensemble buys over its members.

Runs in-process on ``ensemble_core`` (no service needed), so the numbers are the engine's own.
"""
