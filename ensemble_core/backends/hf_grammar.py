"""Constrained decoding for structured output with xgrammar (the grammar engine vLLM uses).

A ``StructuredOutput`` is compiled once per vocabulary: an HF member's tokenizer
(``TokenizerInfo.from_huggingface``, sized to the model's logits), or the byte keys of the
token-level union vocabulary (a raw vocabulary: control keys are empty, hence never allowed;
EOS is the stop token). Each candidate row gets its own matcher: one matcher is fed the accepted
text of the answer so far (whoever wrote it, in whatever tokenization: the grammar reads bytes)
and forked per row, so the grammar state follows the accepted text across segments. Each
decode step masks the row's logits to the tokens the grammar allows, and the chosen token is
fed to the row's matcher; once the grammar is complete only the stop tokens remain allowed.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from typing import Any

import torch
import xgrammar as xgr

from ensemble_core.errors import ConfigError, GenerationError
from ensemble_core.structured_output import StructuredOutput

# text under tool_auto: nothing, or anything that does not open with "{" (a call's JSON)
_PLAIN_TEXT_EBNF = "root ::= ([^{ \\t\\r\\n] [^]*)?"
_COMPILED_PER_VOCAB = 16


def grammar_for(output: StructuredOutput) -> xgr.Grammar:
    """The xgrammar grammar of ``output`` (JSON on one line, ``", "`` and ``": "`` separators)."""
    schema = output.json_schema()
    json_grammar = xgr.Grammar.from_json_schema(schema, any_whitespace=False, strict_mode=output.strict)
    if output.kind == "tool_auto":
        return xgr.Grammar.union(json_grammar, xgr.Grammar.from_ebnf(_PLAIN_TEXT_EBNF))
    return json_grammar


class VocabularyGrammars:
    """Compiled grammars of one vocabulary (one per model, or per union vocabulary)."""

    def __init__(self, info: xgr.TokenizerInfo) -> None:
        self.info = info
        self.vocab_size = info.vocab_size
        self.compiler = xgr.GrammarCompiler(info, max_threads=2)
        self._compiled: dict[str, xgr.CompiledGrammar] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, logits_size: int, stop_ids: Collection[int]) -> VocabularyGrammars:
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=logits_size, stop_token_ids=sorted(stop_ids)
        )
        return cls(info)

    @classmethod
    def for_byte_keys(
        cls, keys: Sequence[bytes], stop_ids: Sequence[int], control: bytes
    ) -> VocabularyGrammars:
        """A raw vocabulary of byte strings; keys starting with ``control`` are not text."""
        encoded = [b"" if key.startswith(control) else key for key in keys]
        return cls(xgr.TokenizerInfo(encoded, xgr.VocabType.RAW, stop_token_ids=sorted(stop_ids)))

    def compiled(self, output: StructuredOutput) -> xgr.CompiledGrammar:
        key = output.key()
        with self._lock:
            found = self._compiled.get(key)
            if found is None:
                try:
                    found = self.compiler.compile_grammar(grammar_for(output))
                except (
                    RuntimeError,
                    TypeError,
                    ValueError,
                ) as exc:  # an unknown type, a bad $ref or pattern: the request's fault
                    reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                    raise ConfigError(
                        f"the structured output's JSON schema cannot be used: {reason}",
                        code="invalid_request",
                    ) from exc
                if len(self._compiled) >= _COMPILED_PER_VOCAB:
                    self._compiled.pop(next(iter(self._compiled)))
                self._compiled[key] = found
            return found

    def rows(self, output: StructuredOutput, accepted_text: str, count: int) -> RowGrammars:
        """``count`` matchers, each already past ``accepted_text``."""
        matcher = xgr.GrammarMatcher(self.compiled(output))
        if accepted_text and not matcher.accept_string(accepted_text):
            raise GenerationError("the accepted text left the structured output grammar")
        return RowGrammars([matcher.fork() for _ in range(count)], self.vocab_size)


class RowGrammars:
    """One grammar matcher per candidate row."""

    def __init__(self, matchers: list[xgr.GrammarMatcher], vocab_size: int) -> None:
        self.matchers = matchers
        self.vocab_size = vocab_size
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)

    def mask(self, row: int, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` (one row) with every token the grammar forbids at -inf (a new tensor)."""
        self.matchers[row].fill_next_token_bitmask(self._bitmask)
        masked = logits.float().clone().unsqueeze(0)
        bitmask = self._bitmask.to(masked.device)
        xgr.apply_token_bitmask_inplace(masked, bitmask, vocab_size=min(self.vocab_size, masked.shape[-1]))
        return masked[0]

    def allowed(self, row: int, size: int) -> torch.Tensor:
        """Which of ``size`` entries the grammar allows next (bool, CPU)."""
        return torch.isfinite(self.mask(row, torch.zeros(size)))

    def accept(self, row: int, token: int) -> None:
        matcher = self.matchers[row]
        if not matcher.is_terminated() and not matcher.accept_token(token):
            raise GenerationError(f"token {token} was chosen outside the structured output grammar")
