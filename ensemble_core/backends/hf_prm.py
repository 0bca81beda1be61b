"""Process reward model scorer (Qwen2.5-Math-PRM style).

Algorithm: the answer is written as steps, each followed by the step separator token
(``<extra_0>`` for Qwen2.5-Math-PRM); the model gives two-class logits per token; at each
separator the probability of the good class is read. The candidate's score is the mean
good-step probability over the candidate's own steps (its lines, or the whole segment).
Reference: Zhang et al., "The Lessons of Developing Process Reward Models in Mathematical
Reasoning" (Qwen2.5-Math-PRM, 2025). Loaded with ``AutoModel`` and ``trust_remote_code`` when the
spec's ``engine_options`` allow it, else ``AutoModelForTokenClassification``.
Cost: like the reward model: shared prefix cached, candidates in one batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ensemble_core.backends.hf_head_scoring import HeadModel, HeadScoringSession
from ensemble_core.errors import ModelLoadError
from ensemble_core.ports import ScoringRequest
from ensemble_core.scorers.specs import ProcessRewardScorerSpec
from ensemble_core.spec import ModelSpec


def split_steps(text: str, mode: str) -> list[str]:
    if mode == "segment":
        return [text.strip()] if text.strip() else []
    return [line.strip() for line in text.split("\n") if line.strip()]


class HFProcessRewardScorer:
    name = "prm"

    def __init__(self, spec: ProcessRewardScorerSpec, host: Any) -> None:
        self.spec = spec
        model_spec = ModelSpec(path=spec.path, device=spec.device, engine_options=dict(spec.engine_options))
        self.model_name = model_spec.display_name
        auto = (
            "AutoModel" if spec.engine_options.get("trust_remote_code") else "AutoModelForTokenClassification"
        )
        model: HeadModel = host.pool.load(
            "prm", model_spec, lambda: HeadModel(model_spec, auto, host.pool.cache_dir)
        )
        self.model = model
        self.separator_id = model.tokenizer.convert_tokens_to_ids(spec.step_separator)
        if self.separator_id is None or self.separator_id == model.tokenizer.unk_token_id:
            raise ModelLoadError(f"the PRM {spec.path!r} has no step separator token {spec.step_separator!r}")
        params = getattr(host, "params", None)
        self.session = HeadScoringSession(model, reuse_cache=getattr(params, "reuse_cache", True))

    def score(self, request: ScoringRequest) -> list[float]:
        sep = self.spec.step_separator
        previous = split_steps(request.accepted_text, self.spec.step_split)
        sequences: list[list[int]] = []
        positions: list[list[int]] = []
        counts: list[int] = []
        for candidate in request.candidates:
            steps = previous + split_steps(candidate, self.spec.step_split)
            own = len(steps) - len(previous)
            answer = "".join(step + sep for step in steps)
            ids = self.model.encode(self.model.render(request.messages, answer))
            seps = [i for i, t in enumerate(ids) if t == self.separator_id]
            sequences.append(ids)
            positions.append(seps[-own:] if own else [])
            counts.append(own)
        wanted = [p if p else [len(s) - 1] for p, s in zip(positions, sequences, strict=True)]
        outputs = self.session.head_outputs(sequences, wanted)
        scores = []
        for out, own in zip(outputs, counts, strict=True):
            if not own:
                scores.append(math.nan)
                continue
            probs = torch.softmax(out, dim=-1)[:, self.spec.good_label_index]
            scores.append(float(probs.mean()))
        return scores

    def prefilled_tokens(self) -> dict[str, int]:
        return {self.model_name: self.session.prefilled}
