"""The token-level (GaC-style) decode loop: average next-token distributions, pick, extend all.

Per step: the leader (first selected member, or ``leader``) gives its distribution. With
``ensemble_steps="uncertain"`` and a leader top-1 probability at or above
``uncertainty_threshold`` the leader's own choice is taken and nobody else runs; otherwise every
model's distribution is projected onto the union vocabulary (``token_vocab``), averaged with the
member weights (``uniform``, or ``confidence``: each member's static weight times its top-1
probability), and one key is chosen: the most probable one at temperature 0, else a sample at
the request's temperature and top-p from a ``torch.Generator`` seeded per job. Every model then
extends its own context with the chosen bytes (``hf_token``).

Stops at the shared EOS key, a stop string, ``max_tokens`` steps or a degenerate n-gram loop.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ensemble_core.backends.hf_token import HFTokenStepper
from ensemble_core.backends.sampling import cut_distribution
from ensemble_core.backends.token_vocab import CONTROL_PREFIX, EOS_KEY, UnionVocabulary, build_union, key_text
from ensemble_core.errors import GenerationError
from ensemble_core.loop_detection import repeated_ngram_tail
from ensemble_core.ports import Sampling
from ensemble_core.segment_text import find_stop
from ensemble_core.structured_output import StructuredOutput

_EXAMPLES = 20  # disagreements shown in the trace
_UNIONS: dict[tuple[int, ...], tuple[list[Any], UnionVocabulary]] = {}
_GRAMMARS: dict[int, tuple[list[bytes], Any]] = {}  # id(keys) -> (keys, VocabularyGrammars)


@dataclass
class TokenVoter:
    """One member at the token level: its model (shared by members on the same weights) and weight."""

    name: str
    stepper: int  # index into the decoder's steppers
    weight: float


@dataclass
class TokenDecodeSettings:
    sampling: Sampling
    seed: int
    max_tokens: int
    stop: tuple[str, ...] = ()
    weighting: str = "uniform"
    ensemble_steps: str = "all"
    uncertainty_threshold: float = 0.5
    loop_max_ngram: int = 12
    loop_min_repeats: int = 4
    ignore_eos: bool = False  # never choose EOS, so every run decodes max_tokens
    min_tokens: int = 0  # EOS is not chosen before this many steps
    include_stop_str: bool = False
    # asked before every step: True ends the answer here (stop reason "stopped"; the engine
    # replaces it with the signal's reason: cancelled or deadline_exceeded)
    should_stop: Callable[[], bool] | None = None
    grammar: StructuredOutput | None = None  # structured output: the shape the answer must keep


@dataclass
class _Stats:
    agreed: dict[str, int]  # ensembled steps where the member's own top token was the chosen one
    sat_out: dict[str, int]  # ensembled steps a member could not vote in (could not spell the answer)
    ensembled_steps: int = 0
    disagreements: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TokenDecodeOutcome:
    text: str
    stop_reason: str
    steps: int
    summary: dict[str, Any] = field(default_factory=dict)


def union_for(steppers: list[HFTokenStepper]) -> UnionVocabulary:
    """The union vocabulary of these models, cached while the same vocabularies stay loaded."""
    vocabs = [s.vocab for s in steppers]
    key = tuple(id(v) for v in vocabs)
    found = _UNIONS.get(key)
    if found is not None and all(a is b for a, b in zip(found[0], vocabs, strict=True)):
        return found[1]
    union = build_union(vocabs)
    if len(_UNIONS) >= 8:
        _UNIONS.pop(next(iter(_UNIONS)))
    _UNIONS[key] = (vocabs, union)
    return union


def choose(probs: torch.Tensor, sampling: Sampling, rng: torch.Generator) -> int:
    """Index of the chosen entry: argmax at temperature 0, else a tempered sample cut by
    top-k, top-p and min-p."""
    if sampling.temperature <= 0:
        return int(torch.argmax(probs))
    logits = torch.log(probs.clamp_min(1e-300)) / sampling.temperature
    tempered = cut_distribution(torch.softmax(logits, dim=-1), sampling)
    return int(torch.multinomial(tempered.float(), 1, generator=rng))


class TokenDecoder:
    """One token-level answer over ``steppers`` (distinct loaded models) voted by ``voters``."""

    def __init__(
        self,
        steppers: list[HFTokenStepper],
        voters: list[TokenVoter],
        leader: int,
        settings: TokenDecodeSettings,
        on_text: Callable[[int, str, str], None] | None = None,
        run_parallel: Callable[[list[Callable[[], Any]]], list[Any]] | None = None,
    ) -> None:
        self.steppers = steppers
        self.voters = voters
        self.leader = leader  # index into voters
        self.settings = settings
        self.on_text = on_text
        self.run_parallel = run_parallel or (lambda tasks: [t() for t in tasks])
        self.union = union_for(steppers) if len(steppers) > 1 or len(voters) > 1 else None
        self.rng = torch.Generator().manual_seed(settings.seed)
        self.answer = bytearray()
        self.steps = 0
        self.stats = _Stats({v.name: 0 for v in voters}, {v.name: 0 for v in voters})
        self._eos = [torch.tensor([i for i, k in enumerate(s.vocab.keys) if k == EOS_KEY]) for s in steppers]
        self.grammar = self._grammar_rows()

    def _grammar_rows(self) -> Any:
        """Structured output: one matcher over the key space tokens are picked from (the union
        vocabulary's, or the one model's own)."""
        if self.settings.grammar is None:
            return None
        from ensemble_core.backends.hf_grammar import VocabularyGrammars

        keys = self.union.keys if self.union is not None else self.steppers[0].vocab.keys
        found = _GRAMMARS.get(id(keys))
        if found is None or found[0] is not keys:
            stops = [i for i, k in enumerate(keys) if k == EOS_KEY]
            found = (keys, VocabularyGrammars.for_byte_keys(keys, stops, CONTROL_PREFIX))
            if len(_GRAMMARS) >= 8:
                _GRAMMARS.pop(next(iter(_GRAMMARS)))
            _GRAMMARS[id(keys)] = found
        return found[1].rows(self.settings.grammar, "", 1)

    def _pick(self, probs: torch.Tensor, stepper: int | None = None) -> int:
        """``choose`` on a model's (``stepper``) or the union's distribution; EOS masked if asked."""
        if self.grammar is not None:
            return self._pick_in_grammar(probs, stepper)
        if self.settings.ignore_eos or self.steps < self.settings.min_tokens:
            probs = probs.clone()
            if stepper is not None:
                probs[self._eos[stepper]] = 0.0
            elif self.union is not None and EOS_KEY in self.union.index:
                probs[self.union.index[EOS_KEY]] = 0.0
        return choose(probs, self.settings.sampling, self.rng)

    def _pick_in_grammar(self, probs: torch.Tensor, stepper: int | None) -> int:
        """The chosen entry among those the grammar allows (EOS held back by ``min_tokens``
        unless it is all the grammar allows); the grammar's state takes the choice."""
        allowed = self.grammar.allowed(0, probs.numel())
        if self.steps < self.settings.min_tokens:
            eos = self._eos[stepper] if stepper is not None else None
            if eos is None and self.union is not None and EOS_KEY in self.union.index:
                eos = torch.tensor([self.union.index[EOS_KEY]])
            if eos is not None and len(eos):
                without = allowed.clone()
                without[eos] = False
                allowed = without if bool(without.any()) else allowed
        logp = torch.log(probs.clamp_min(1e-300)).masked_fill(~allowed, -torch.inf)
        sampling = self.settings.sampling
        if sampling.temperature <= 0:
            index = int(torch.argmax(logp))
        else:
            tempered = cut_distribution(torch.softmax(logp / sampling.temperature, dim=-1), sampling)
            index = int(torch.multinomial(tempered.float(), 1, generator=self.rng))
        self.grammar.accept(0, index)
        return index

    # -- one step ---------------------------------------------------------------------------
    def _ensure_synced(self, index: int) -> bool:
        stepper = self.steppers[index]
        return stepper.synced or stepper.resync(bytes(self.answer))

    def _step(self) -> tuple[bytes, str]:
        """One step: the chosen key and who chose it (the leader alone, or ``ensemble``)."""
        lead = self.voters[self.leader].stepper
        leader_alone = self.settings.ensemble_steps == "uncertain" and (
            self.grammar is None or self.union is None  # a grammar lives in the union's key space
        )
        if leader_alone and self._ensure_synced(lead):
            probs = self.steppers[lead].distribution()  # the leader alone first: maybe enough
            if float(probs.max()) >= self.settings.uncertainty_threshold:
                return self.steppers[lead].vocab.keys[self._pick(probs, lead)], self.voters[self.leader].name
        # every model at once (concurrently; a leader that already ran answers from its cache)
        ready = [i for i in sorted({v.stepper for v in self.voters}) if self._ensure_synced(i)]
        tasks: list[Callable[[], Any]] = [lambda i=i: self.steppers[i].distribution() for i in ready]  # type: ignore[misc]
        dists: dict[int, torch.Tensor] = dict(zip(ready, self.run_parallel(tasks), strict=True))
        return self._ensemble_step(dists), "ensemble"

    def _ensemble_step(self, dists: dict[int, torch.Tensor]) -> bytes:
        lead = self.voters[self.leader].stepper
        leader_key, leader_top = None, 0.0
        if lead in dists:
            leader_key = self.steppers[lead].vocab.keys[int(torch.argmax(dists[lead]))]
            leader_top = float(dists[lead].max())
        ready = list(dists)
        if not ready:
            raise GenerationError("token level: no model can spell the answer so far (no single-byte tokens)")
        if self.union is None:  # one model, one member: its own distribution
            only = ready[0]
            key = self.steppers[only].vocab.keys[self._pick(dists[only], only)]
            self._count(key, leader_key, leader_top, {self.voters[0].name: key}, None)
            return key
        mix = torch.zeros(self.union.size, dtype=torch.float64)
        projected: dict[int, torch.Tensor] = {}
        total = 0.0
        member_keys: dict[str, bytes] = {}
        for voter in self.voters:
            if voter.stepper not in dists:
                self.stats.sat_out[voter.name] += 1
                continue
            probs = dists[voter.stepper]
            if voter.stepper not in projected:
                projected[voter.stepper] = self.union.project(voter.stepper, probs)
            weight = voter.weight
            if self.settings.weighting == "confidence":
                weight *= float(probs.max())
            mix.add_(projected[voter.stepper], alpha=weight)
            total += weight
            member_keys[voter.name] = self.steppers[voter.stepper].vocab.keys[int(torch.argmax(probs))]
        if total > 0:
            mix /= total
        key = self.union.keys[self._pick(mix)]
        self._count(key, leader_key, leader_top, member_keys, mix)
        return key

    def _count(
        self,
        key: bytes,
        leader_key: bytes | None,
        leader_top: float,
        member_keys: dict[str, bytes],
        mix: torch.Tensor | None,
    ) -> None:
        stats = self.stats
        stats.ensembled_steps += 1
        for name, member_key in member_keys.items():
            stats.agreed[name] += int(member_key == key)
        if leader_key is not None and leader_key != key:
            stats.disagreements += 1
            if len(stats.examples) < _EXAMPLES:
                example = {
                    "step": self.steps,
                    "chosen": _show(key),
                    "leader_choice": _show(leader_key),
                    "leader_top_prob": round(leader_top, 4),
                }
                if mix is not None and self.union is not None:
                    example["ensemble_prob"] = round(float(mix[self.union.index[key]]), 4)
                stats.examples.append(example)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> TokenDecodeOutcome:
        settings = self.settings
        started = time.perf_counter()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = ""
        stop_reason = "max_tokens"
        self.steps = 0
        while self.steps < settings.max_tokens:
            if settings.should_stop is not None and settings.should_stop():
                stop_reason = "stopped"
                break
            key, source = self._step()
            self.steps += 1
            if key == EOS_KEY:
                stop_reason = "eos"
                break
            for stepper in self.steppers:
                stepper.push(key)
            added = key_text(key)
            self.answer.extend(added)
            piece = decoder.decode(added)
            tail = text[-64:]
            text += piece
            match = (
                find_stop(tail, piece, settings.stop, include=settings.include_stop_str)
                if settings.stop and piece
                else None
            )
            if match is not None:
                text = text[: len(text) - len(piece) - match.trim_accepted] + piece[: match.keep_chars]
                stop_reason = "stop_string"
                if self.on_text is not None and piece[: match.keep_chars]:
                    self.on_text(self.steps - 1, source, piece[: match.keep_chars])
                break
            if self.on_text is not None and piece:
                self.on_text(self.steps - 1, source, piece)
            if piece and repeated_ngram_tail(text, settings.loop_max_ngram, settings.loop_min_repeats):
                stop_reason = "repeated_ngram"
                break
        if stop_reason != "stop_string":
            text += decoder.decode(b"", final=True)
        return TokenDecodeOutcome(text, stop_reason, self.steps, self._summary(time.perf_counter() - started))

    def _summary(self, seconds: float) -> dict[str, Any]:
        stats = self.stats
        passes = {s.name: s.counters.forward_passes for s in self.steppers}
        ensembled = stats.ensembled_steps
        return {
            "steps": self.steps,
            "leader": self.voters[self.leader].name,
            "ensemble_steps": self.settings.ensemble_steps,
            "ensembled_steps": ensembled,
            "disagreements": stats.disagreements,
            "disagreement_rate": round(stats.disagreements / ensembled, 4) if ensembled else 0.0,
            "agreement": {
                name: round(count / ensembled, 4) if ensembled else 0.0
                for name, count in stats.agreed.items()
            },
            "sat_out": {k: v for k, v in stats.sat_out.items() if v},
            "union_vocabulary": self.union.size if self.union is not None else self.steppers[0].vocab.size,
            "resyncs": {s.name: s.resyncs for s in self.steppers},
            "forward_passes": passes,
            "forward_passes_per_token": round(sum(passes.values()) / self.steps, 3) if self.steps else 0.0,
            "decode_seconds": round(seconds, 4),
            "disagreement_examples": stats.examples,
        }


def _show(key: bytes) -> str:
    if key == EOS_KEY:
        return "<eos>"
    if not key_text(key):
        return key[len(CONTROL_PREFIX) :].decode("utf-8", errors="backslashreplace")
    return key.decode("utf-8", errors="backslashreplace")
