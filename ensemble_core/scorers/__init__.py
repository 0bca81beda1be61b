"""Scorers: configuration types and their implementations.

Pure-Python scorers live here (likelihood through the generator port, remote HTTP); the ones
that need torch (reward model, PRM, embedding) live in ``ensemble_core.backends`` and are named
here by ``"module:Class"`` strings, imported only when a job uses them.
"""

from pydantic import BaseModel

from ensemble_core.scorers.specs import (
    EmbeddingScorerSpec,
    LikelihoodScorerSpec,
    ProcessRewardScorerSpec,
    RemoteScorerSpec,
    RewardModelScorerSpec,
    ScorerSpec,
)

SCORER_TYPES: dict[str, tuple[type[BaseModel], str]] = {
    "likelihood": (LikelihoodScorerSpec, "mean log-probability of the candidate under scorer models"),
    "reward_model": (RewardModelScorerSpec, "sequence-classification reward model (one logit)"),
    "prm": (ProcessRewardScorerSpec, "process reward model: mean good-step probability"),
    "embedding": (EmbeddingScorerSpec, "MiniLM embedding similarity: relevance or agreement"),
    "remote": (RemoteScorerSpec, "remote HTTP scorer (URL, timeout, retries)"),
}

SCORER_IMPLEMENTATIONS: dict[str, str] = {
    "likelihood": "ensemble_core.scorers.likelihood:LikelihoodScorer",
    "reward_model": "ensemble_core.backends.hf_reward:HFRewardModelScorer",
    "prm": "ensemble_core.backends.hf_prm:HFProcessRewardScorer",
    "embedding": "ensemble_core.backends.hf_embedding:HFEmbeddingScorer",
    "remote": "ensemble_core.scorers.remote:RemoteScorer",
}

__all__ = ["SCORER_IMPLEMENTATIONS", "SCORER_TYPES", "ScorerSpec"]
