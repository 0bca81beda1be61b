"""Model-selection methods: one table of built-ins (names are public API: add aliases, never rename)."""

from ensemble_core.registry import MethodEntry, MethodTable
from ensemble_core.selection.all_models import AllModelsSelector
from ensemble_core.selection.llm_blender import LLMBlenderSelector
from ensemble_core.selection.random_subset import RandomSubsetSelector
from ensemble_core.selection.zscore import ZScoreSelector

SELECTORS = MethodTable(
    "model_selection",
    [
        MethodEntry("all", AllModelsSelector, "every configured model takes part"),
        MethodEntry("random", RandomSubsetSelector, "k models drawn at random (seeded per job)"),
        MethodEntry(
            "zscore",
            ZScoreSelector,
            "keep the models with the best z-scored prompt perplexity and confidence",
        ),
        MethodEntry(
            "llm_blender",
            LLMBlenderSelector,
            "rank models by a pairwise tournament of short probe answers judged by the scorer",
        ),
    ],
)

__all__ = ["SELECTORS"]
