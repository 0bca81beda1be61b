"""One Hugging Face model's side of a token-level job: its own token ids, KV cache, distribution.

The token-level decoder picks one union-vocabulary key (a byte string) per step; every model
then extends its own context with those bytes:

- a model whose vocabulary has the key as one token, and whose context already spells the
  answer so far, gets that token id queued (no re-tokenization, so a model ensembled with
  itself decodes exactly its own greedy ids);
- any other model is marked out of sync and, the next time its distribution is needed,
  re-tokenizes the prompt plus the answer text (a character cut off at the end is spelled with
  the model's single-byte tokens), keeps the longest common prefix of its KV cache and
  prefills the rest in one forward pass.

Queued ids are only fed when the distribution is asked for, so a model skipped for several
steps (ensembling at uncertain steps only) catches up in one multi-token forward pass.
"""

from __future__ import annotations

from typing import Any

import torch

from ensemble_core.backends.hf import HFTextGenerator
from ensemble_core.backends.hf_loading import input_device
from ensemble_core.backends.prefix_cache import PrefixCache, common_prefix_length
from ensemble_core.backends.token_vocab import TokenizerVocabulary, split_utf8, vocabulary_for
from ensemble_core.errors import GenerationError
from ensemble_core.ports import SessionCounters
from ensemble_core.spec import PromptInput, PromptStyle


def _logits_size(model: Any) -> int:
    head = model.get_output_embeddings()
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


class HFTokenStepper:
    """Next-token distributions of one HF model over a growing answer (one per job and weights)."""

    def __init__(
        self,
        generator: HFTextGenerator,
        prompt: PromptInput,
        name: str | None = None,
        style: PromptStyle | None = None,
    ) -> None:
        self.generator = generator
        self.name = name or generator.name  # the job's member name (the pool's name is the first loader's)
        self.model = generator.model
        self.device = input_device(self.model)
        self.vocab: TokenizerVocabulary = vocabulary_for(
            generator, generator.tokenizer, generator.eos_ids, _logits_size(self.model)
        )
        self.rendered = generator.render(prompt, style)
        self.stop_strings = self.rendered.stop_strings  # this member's turn ends stop the answer
        self.prompt_ids = generator.encode_prompt(self.rendered)
        self.counters = SessionCounters(prompt_tokens=len(self.prompt_ids))
        self.cache = PrefixCache(self.model.config)
        self.pending: list[int] = list(self.prompt_ids)
        self.pending_pushed = 0  # of the pending ids, how many were queued by push (decode steps)
        self.synced = True  # cache ids + pending ids spell the prompt plus the answer so far
        self.resyncs = 0
        self._probs: torch.Tensor | None = None

    # -- the decoder's calls ----------------------------------------------------------------
    @torch.inference_mode()
    def distribution(self) -> torch.Tensor:
        """Probabilities (float64, on CPU, over this model's ids) of the next token."""
        if self.pending or self._probs is None:
            self._feed()
        assert self._probs is not None
        return self._probs

    def push(self, key: bytes) -> bool:
        """Queue the token for ``key`` if this model has it and is in sync; else go out of sync."""
        token_id = self.vocab.canonical.get(key) if self.synced else None
        if self.rendered.separator and self.cache.rows[0] + self.pending == self.prompt_ids:
            if not key[:1].isspace():  # "Answer:" + "4": resync spells the separator in
                token_id = None
        if token_id is None:
            self.synced = False
            return False
        spellings = self.vocab.spellings.get(key)
        if spellings and self._probs is not None:  # the spelling this model found most likely
            token_id = max(spellings, key=lambda i: float(self._probs[i]))  # type: ignore[index]
        self.pending.append(token_id)
        self.pending_pushed += 1
        self._probs = None
        return True

    def resync(self, answer: bytes) -> bool:
        """Re-tokenize prompt + ``answer``; keep the common cached prefix. False: cannot spell it."""
        text, tail = split_utf8(answer)
        target = self.generator.encode_prompt(self.rendered, text)
        for byte in tail:
            if byte not in self.vocab.byte_ids:
                return False
            target.append(self.vocab.byte_ids[byte])
        cached = self.cache.rows[0]
        shared = common_prefix_length(cached + self.pending, target)
        if shared >= len(target) and not self.pending and self._probs is not None:
            self.synced = True  # nothing new: the last distribution still holds
            return True
        keep = min(shared, len(target) - 1, len(cached))
        if keep < len(cached):
            self.cache.crop_to(keep)
        self.pending = target[keep:]
        self.pending_pushed = 0
        self._probs = None
        self.synced = True
        self.resyncs += 1
        return True

    # -- internals --------------------------------------------------------------------------
    def _feed(self) -> None:
        ids = self.pending or self.cache.rows[0][-1:]
        if not self.pending:  # re-feed the last id to get its logits back
            self.cache.crop_to(len(self.cache.rows[0]) - 1)
        tensor = torch.tensor([ids], dtype=torch.long, device=self.device)
        try:
            out = self.model(
                input_ids=tensor, past_key_values=self.cache.cache, use_cache=True, logits_to_keep=1
            )
        except RuntimeError as exc:
            raise GenerationError(f"{self.name}: forward pass failed: {exc}") from exc
        self.cache.append([ids])
        self.counters.forward_passes += 1
        self.counters.generated += self.pending_pushed
        self.counters.prefilled += len(ids) - self.pending_pushed
        self.pending, self.pending_pushed = [], 0
        logits = out.logits[0, -1, :].to(device="cpu", dtype=torch.float64)
        self._probs = torch.softmax(logits, dim=-1)

    def close(self) -> None:
        self.cache = PrefixCache(self.model.config)
        self.pending, self._probs = [], None


def open_token_stepper(
    generator: Any, prompt: PromptInput, name: str | None = None, style: PromptStyle | None = None
) -> HFTokenStepper:
    if not isinstance(generator, HFTextGenerator):
        raise GenerationError(
            f"{getattr(generator, 'name', generator)!r}: token-level ensembling needs full next-token "
            "distributions, which only the 'hf' engine gives"
        )
    return HFTokenStepper(generator, prompt, name, style)
