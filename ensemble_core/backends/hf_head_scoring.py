"""Scoring models made of a transformer body and a small head (reward models, PRMs).

The body runs over the shared prefix once (kept in a ``PrefixCache`` across rounds) and over
the candidates in one right-padded batch; the head is applied only where a score is read.
Models whose head cannot be found (``score``/``classifier``) fall back to the model's own
forward on full sequences, without cache reuse.
"""

from __future__ import annotations

from typing import Any

import torch

from ensemble_core.backends.hf_loading import from_pretrained, input_device, load_tokenizer
from ensemble_core.backends.prefix_cache import PrefixCache, common_prefix_length
from ensemble_core.spec import ChatMessage, ModelSpec

_FALLBACK_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
)


class HeadModel:
    """A transformers model loaded once per process and split into body and head."""

    def __init__(self, spec: ModelSpec, auto_class_name: str, cache_dir: Any = None) -> None:
        import transformers

        auto_class = getattr(transformers, auto_class_name)
        self.tokenizer = load_tokenizer(spec, cache_dir)
        self.model = from_pretrained(auto_class, spec, cache_dir)
        self.device = input_device(self.model)
        self.body: Any = getattr(self.model, "base_model", None)
        self.head: Any = getattr(self.model, "score", None) or getattr(self.model, "classifier", None)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0

    @property
    def splittable(self) -> bool:
        return (
            self.body is not None and self.body is not self.model and isinstance(self.head, torch.nn.Module)
        )

    def render(self, messages: list[ChatMessage], answer: str) -> str:
        payload = [{"role": m.role, "content": m.content} for m in messages]
        payload.append({"role": "assistant", "content": answer})
        template = None if getattr(self.tokenizer, "chat_template", None) else _FALLBACK_TEMPLATE
        return str(self.tokenizer.apply_chat_template(payload, tokenize=False, chat_template=template))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


class HeadScoringSession:
    """One job's prefix cache on a ``HeadModel``; returns head outputs at chosen positions."""

    def __init__(self, model: HeadModel, reuse_cache: bool = True) -> None:
        self.model = model
        self.reuse_cache = reuse_cache and model.splittable
        self.cache: PrefixCache | None = None
        self.prefilled = 0

    @torch.inference_mode()
    def head_outputs(self, sequences: list[list[int]], positions: list[list[int]]) -> list[torch.Tensor]:
        """Head outputs (float) of each sequence at its ``positions`` (absolute indices)."""
        if not self.model.splittable:
            return self._full_forward(sequences, positions)
        shared = len(sequences[0])
        for seq in sequences[1:]:
            shared = min(shared, common_prefix_length(sequences[0], seq))
        # positions read by the head must be in the batch, and every row feeds at least one id
        earliest = min((min(p) for p in positions if p), default=shared)
        keep = max(0, min(shared, earliest, min(len(s) for s in sequences) - 1))
        if self.cache is None or not self.reuse_cache:
            self.cache = PrefixCache(self.model.model.config)
        row, common = self.cache.best_row(sequences[0][:keep])
        self.cache.keep_row(row)
        self.cache.crop_to(min(common, keep))
        rest = sequences[0][len(self.cache.rows[0]) : keep]
        if rest:
            self._body([rest])
            self.prefilled += len(rest)
        self.cache.repeat(len(sequences))
        rows = [s[keep:] for s in sequences]
        width = max(len(r) for r in rows)
        padded = [r + [self.model.pad_id] * (width - len(r)) for r in rows]
        self.prefilled += sum(len(r) for r in rows)
        hidden = self._body(padded, full_mask=True)
        outputs = []
        for i, wanted in enumerate(positions):
            index = torch.tensor([p - keep for p in wanted], device=hidden.device)
            outputs.append(self.model.head(hidden[i, index]).float())
        return outputs

    def _body(self, ids: list[list[int]], full_mask: bool = False) -> torch.Tensor:
        assert self.cache is not None
        tensor = torch.tensor(ids, dtype=torch.long, device=self.model.device)
        kwargs: dict[str, Any] = {}
        if full_mask:  # right padding under a causal mask never reaches the real tokens
            past = len(self.cache.rows[0])
            kwargs["attention_mask"] = torch.ones(
                (len(ids), past + len(ids[0])), dtype=torch.long, device=self.model.device
            )
        out = self.model.body(input_ids=tensor, past_key_values=self.cache.cache, use_cache=True, **kwargs)
        self.cache.append(ids)
        hidden: torch.Tensor = out.last_hidden_state
        return hidden

    def _full_forward(self, sequences: list[list[int]], positions: list[list[int]]) -> list[torch.Tensor]:
        outputs = []
        for seq, wanted in zip(sequences, positions, strict=True):
            tensor = torch.tensor([seq], dtype=torch.long, device=self.model.device)
            logits = self.model.model(input_ids=tensor).logits.float()
            self.prefilled += len(seq)
            if logits.dim() == 2:  # pooled (sequence classification): one row per sequence
                outputs.append(logits.expand(len(wanted), -1))
            else:
                outputs.append(logits[0, torch.tensor(wanted)])
        return outputs
