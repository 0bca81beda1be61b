"""Scorers: configuration types and their implementations.

Pure-Python scorers live here (likelihood through the generator port, remote HTTP); the ones
that need torch (reward model, PRM, embedding) live in ``ensemble_core.backends`` and are named
here by ``"module:Class"`` strings, imported only when a job uses them.
"""

from pydantic import BaseModel

from ensemble_core.scorers.specs import (
    AgreementScorerSpec,
    ConfidenceScorerSpec,
    EmbeddingScorerSpec,
    LikelihoodScorerSpec,
    NoveltyScorerSpec,
    PmiScorerSpec,
    ProcessRewardScorerSpec,
    RemoteScorerSpec,
    RewardModelScorerSpec,
    ScorerSpec,
    SelfCertaintyScorerSpec,
)

SCORER_TYPES: dict[str, tuple[type[BaseModel], str]] = {
    "likelihood": (
        LikelihoodScorerSpec,
        "log-probability per byte of the candidate under the other members (cross-model)",
    ),
    "pmi": (PmiScorerSpec, "log-likelihood given the question minus given a neutral prompt, per byte"),
    "agreement": (AgreementScorerSpec, "share of the other candidates with the same answer (or words)"),
    "novelty": (NoveltyScorerSpec, "1 when the answer has a word the question lacks (not a repeat), else 0"),
    "confidence": (ConfidenceScorerSpec, "DeepConf trace confidence of the author's decoding (free)"),
    "self_certainty": (SelfCertaintyScorerSpec, "mean KL(uniform || p) of the author's decoding (free)"),
    "reward_model": (RewardModelScorerSpec, "sequence-classification reward model (one logit)"),
    "prm": (ProcessRewardScorerSpec, "process reward model: mean good-step probability"),
    "embedding": (EmbeddingScorerSpec, "MiniLM embedding similarity: relevance or agreement"),
    "remote": (RemoteScorerSpec, "remote HTTP scorer (URL, timeout, retries)"),
}

SCORER_IMPLEMENTATIONS: dict[str, str] = {
    "likelihood": "ensemble_core.scorers.likelihood:LikelihoodScorer",
    "pmi": "ensemble_core.scorers.pmi:PmiScorer",
    "agreement": "ensemble_core.scorers.agreement:AgreementScorer",
    "novelty": "ensemble_core.scorers.novelty:NoveltyScorer",
    "confidence": "ensemble_core.scorers.confidence:ConfidenceScorer",
    "self_certainty": "ensemble_core.scorers.confidence:SelfCertaintyScorer",
    "reward_model": "ensemble_core.backends.hf_reward:HFRewardModelScorer",
    "prm": "ensemble_core.backends.hf_prm:HFProcessRewardScorer",
    "embedding": "ensemble_core.backends.hf_embedding:HFEmbeddingScorer",
    "remote": "ensemble_core.scorers.remote:RemoteScorer",
}

__all__ = ["SCORER_IMPLEMENTATIONS", "SCORER_TYPES", "ScorerSpec"]
