"""Embedding-similarity scorer on a sentence encoder (default: the bundled all-MiniLM-L6-v2).

Algorithm: mean-pooled, L2-normalised encoder embeddings (the sentence-transformers recipe of
all-MiniLM-L6-v2). ``relevance``: cosine of the candidate with the last user message;
``agreement``: mean cosine of the candidate with the round's other candidates (a soft
self-consistency vote; a lone candidate scores 0).
Reference: Reimers & Gurevych, Sentence-BERT (2019); agreement voting as in
self-consistency / LLM-Blender's similarity baselines.
Cost: one encoder forward over the round's candidates (22M parameters: milliseconds), the
prompt embedding computed once per job.
"""

from __future__ import annotations

from typing import Any

import torch

from ensemble_core.backends.hf_loading import from_pretrained, input_device, load_tokenizer
from ensemble_core.ports import ScoringRequest
from ensemble_core.scorers.specs import EmbeddingScorerSpec
from ensemble_core.spec import ModelSpec


class SentenceEncoder:
    """A transformers encoder with mean pooling and L2 normalisation."""

    def __init__(self, spec: ModelSpec, cache_dir: Any = None) -> None:
        from transformers import AutoModel

        self.tokenizer = load_tokenizer(spec, cache_dir)
        self.model = from_pretrained(AutoModel, spec, cache_dir)
        self.device = input_device(self.model)
        self.tokens_encoded = 0

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        self.tokens_encoded += int(batch["attention_mask"].sum())
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)


class HFEmbeddingScorer:
    def __init__(self, spec: EmbeddingScorerSpec, host: Any) -> None:
        self.spec = spec
        self.name = f"embedding_{spec.mode}"
        model_spec = ModelSpec(path=spec.path, device=spec.device, name=spec.path.split(":")[-1])
        self.model_name = model_spec.display_name
        self.encoder: SentenceEncoder = host.pool.load(
            "embedding", model_spec, lambda: SentenceEncoder(model_spec, host.pool.cache_dir)
        )
        self._prompt_key: str | None = None
        self._prompt_vec: torch.Tensor | None = None
        self._used_before = self.encoder.tokens_encoded

    def _prompt_embedding(self, request: ScoringRequest) -> torch.Tensor:
        prompt = request.prompt.question()
        if prompt != self._prompt_key or self._prompt_vec is None:
            self._prompt_vec = self.encoder.encode([prompt])[0]
            self._prompt_key = prompt
        return self._prompt_vec

    def score(self, request: ScoringRequest) -> list[float]:
        texts = [c if c.strip() else " " for c in request.candidates]
        vectors = self.encoder.encode(texts)
        if self.spec.mode == "relevance":
            return [float(v) for v in vectors @ self._prompt_embedding(request)]
        n = len(texts)
        if n < 2:
            return [0.0] * n
        sims = vectors @ vectors.T
        return [float((sims[i].sum() - sims[i, i]) / (n - 1)) for i in range(n)]

    def prefilled_tokens(self) -> dict[str, int]:
        return {self.model_name: self.encoder.tokens_encoded - self._used_before}
