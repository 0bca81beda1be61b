"""Sequence-classification reward model scorer (``AutoModelForSequenceClassification``, one logit).

Algorithm: the conversation plus ``accepted text + candidate`` as the assistant's turn, in the
reward model's chat template; the score is the reward logit at the last token.
Reference: outcome reward models as used in RLHF and best-of-n (e.g. Skywork-Reward,
InternLM2-Reward); the upstream toolkit's reward scorer.
Cost: the shared prefix (prompt + accepted text) is prefilled once and kept across rounds; the
candidates' tails run in one batched forward.
"""

from __future__ import annotations

from typing import Any

from ensemble_core.backends.hf_head_scoring import HeadModel, HeadScoringSession
from ensemble_core.ports import ScoringRequest
from ensemble_core.scorers.specs import RewardModelScorerSpec
from ensemble_core.spec import ModelSpec


class HFRewardModelScorer:
    name = "reward_model"

    def __init__(self, spec: RewardModelScorerSpec, host: Any) -> None:
        model_spec = ModelSpec(path=spec.path, device=spec.device, engine_options=dict(spec.engine_options))
        self.model_name = model_spec.display_name
        model: HeadModel = host.pool.load(
            "reward_model",
            model_spec,
            lambda: HeadModel(model_spec, "AutoModelForSequenceClassification", host.pool.cache_dir),
        )
        params = getattr(host, "params", None)
        self.session = HeadScoringSession(model, reuse_cache=getattr(params, "reuse_cache", True))
        self.model = model

    def score(self, request: ScoringRequest) -> list[float]:
        sequences = [
            self.model.encode(self.model.render(request.messages, request.accepted_text + c))
            for c in request.candidates
        ]
        outputs = self.session.head_outputs(sequences, [[len(s) - 1] for s in sequences])
        return [float(out[0, 0]) for out in outputs]

    def prefilled_tokens(self) -> dict[str, int]:
        return {self.model_name: self.session.prefilled}
