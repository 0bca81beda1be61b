"""Model-selection methods: one table of built-ins (names are public API: add aliases, never rename)."""

from ensemble_core.registry import MethodEntry, MethodTable
from ensemble_core.selection.all_models import AllModelsSelector

SELECTORS = MethodTable(
    "model_selection",
    [
        MethodEntry("all", AllModelsSelector, "every configured model takes part"),
    ],
)

__all__ = ["SELECTORS"]
