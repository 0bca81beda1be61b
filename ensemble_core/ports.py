"""The protocols the engine needs from a backend: text generation and scoring.

A ``TextGenerator`` is one set of loaded weights (shared by every member with the same
``ModelSpec.load_key()``). Per job it opens a ``GenerationSession`` that owns the job's state for
those weights: the prompt (raw text, or chat messages rendered as the member's prompt style says), the KV cache of the accepted prefix, a seeded random generator
and token counters. Members that share weights and prompt style share one session, so their candidates are
decoded in one batch.

Hand-over between models is by text: each round the engine passes the accepted answer text and
every session re-tokenizes it with its own tokenizer (models with different vocabularies work
together); a session keeps whatever part of its cache still matches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from ensemble_core.spec import ChatMessage, PromptInput, PromptStyle
from ensemble_core.structured_output import StructuredOutput

# how many of a step's most likely tokens DeepConf's token confidence averages (the paper's k)
CONFIDENCE_TOP_K = 20

SegmentBoundary = Literal["sentence", "line", "none"]
# "context_full": the model's context window (prompt + answer) has no room for another token
CandidateFinish = Literal["boundary", "eos", "length", "stop_string", "boundary_string", "context_full"]


@dataclass(frozen=True)
class Sampling:
    """How one candidate is sampled. ``temperature == 0`` means greedy.

    The rest are vLLM's sampling fields, at their neutral values by default: ``top_k`` (0: off),
    ``min_p`` (drop tokens below ``min_p`` times the top probability), ``repetition_penalty``
    (over prompt and output tokens, as HF and vLLM apply it), ``presence_penalty`` and
    ``frequency_penalty`` (over the output: the accepted answer plus this candidate) and
    ``logit_bias`` (token id, bias) pairs in this model's vocabulary. Penalties and biases
    change which token is picked, greedy included; reported log-probabilities stay the model's.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()

    @property
    def adjusts_logits(self) -> bool:
        """Whether the logits need penalties or biases before a token is chosen."""
        return bool(
            self.logit_bias
            or self.repetition_penalty != 1.0
            or self.presence_penalty
            or self.frequency_penalty
        )


@dataclass(frozen=True)
class SegmentLimits:
    """Where a candidate segment ends (checked while decoding, token by token).

    ``boundary``: ``sentence`` ends after sentence punctuation or a newline, ``line`` after a
    newline, ``none`` only at ``max_new_tokens``. ``stop_strings`` end the whole answer (they
    are matched across the accepted text and the candidate); ``boundary_strings`` end the
    segment and stay in it (e.g. ``</think>`` for progressive hand-over).
    ``min_tokens`` tokens are generated before a sentence/line boundary may end the segment.
    """

    max_new_tokens: int
    boundary: SegmentBoundary = "sentence"
    stop_strings: tuple[str, ...] = ()
    boundary_strings: tuple[str, ...] = ()
    min_tokens: int = 1
    ignore_eos: bool = False  # decode past EOS (benchmarks, and the request's ``ignore_eos``)
    # the request's own fields: EOS and ``stop_token_ids`` are masked until this segment has
    # ``eos_after`` tokens (what is left of the request's ``min_tokens``)
    eos_after: int = 0
    stop_token_ids: tuple[int, ...] = ()  # end the answer like EOS (not in the text)
    include_stop_str: bool = False  # a stop string stays in the text
    skip_special_tokens: bool = True  # special tokens (other than EOS) are left out of the text
    # asked once per decode step (where the backend decodes step by step): True ends every
    # candidate where it is, finish "length" (a cancelled job, or one past its deadline)
    should_stop: Callable[[], bool] | None = field(default=None, compare=False, repr=False)
    # every token must keep the answer (accepted text + this segment) inside this shape
    grammar: StructuredOutput | None = None
    # the request's ``logprobs``/``top_logprobs``: keep this many alternatives per token
    top_logprobs: int = 0
    # called with the candidate's text so far and the stop strings in force after each decoded
    # token that did not end it (set only for a call with one sampling whose candidate is sure
    # to be accepted: streaming)
    on_text: Callable[[str, tuple[str, ...]], None] | None = field(default=None, compare=False, repr=False)


@dataclass
class Candidate:
    """One generated segment.

    ``token_logprobs`` are the untempered log-probabilities the generating model gave each
    generated token (free by-products of decoding, used by the likelihood scorer).
    ``token_confidence`` (DeepConf's token confidence: minus the mean log-probability of the
    ``CONFIDENCE_TOP_K`` most likely tokens at that step; high = peaked) and
    ``token_self_certainty`` (KL(uniform || p) at that step, Kang et al. 2025) are computed
    from the same untempered distribution while decoding; empty where a backend cannot see it
    (a remote server that returns no top log-probabilities).
    ``text`` excludes EOS and, for ``stop_string``, everything from the stop string on.
    """

    text: str
    token_ids: list[int]
    token_logprobs: list[float]
    finish: CandidateFinish
    stop_string: str | None = None
    trim_accepted: int = 0  # a stop string that began in the accepted text cuts it back this far
    token_confidence: list[float] = field(default_factory=list)
    token_self_certainty: list[float] = field(default_factory=list)
    # per generated token, the ``limits.top_logprobs`` most likely (token id, untempered
    # log-probability) at that step; empty unless asked for
    token_top: list[list[tuple[int, float]]] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def mean_logprob(self) -> float:
        if not self.token_logprobs:
            return 0.0
        return sum(self.token_logprobs) / len(self.token_logprobs)


@dataclass(frozen=True)
class PromptStatistics:
    """One forward pass over the prompt: mean negative log-likelihood and top-1 confidence."""

    mean_nll: float
    mean_top1_prob: float
    tokens: int

    @property
    def perplexity(self) -> float:
        import math

        return math.exp(min(self.mean_nll, 50.0))


@dataclass
class SessionCounters:
    prompt_tokens: int = 0
    prefilled: int = 0
    generated: int = 0
    scored: int = 0  # tokens run through a forward pass only to score them
    forward_passes: int = 0


@dataclass(frozen=True)
class ContinuationScore:
    mean_logprob: float
    tokens: int


class GenerationSession(Protocol):
    """One job's state on one set of weights."""

    counters: SessionCounters

    def prompt_statistics(self) -> PromptStatistics:
        """Perplexity and confidence over the chat prompt (also primes the prompt's cache)."""
        ...

    def generate(
        self, accepted_text: str, samplings: list[Sampling], limits: SegmentLimits
    ) -> list[Candidate]:
        """Continue ``accepted_text`` once per sampling, decoding the candidates in one batch."""
        ...

    def score_continuations(self, accepted_text: str, continuations: list[str]) -> list[ContinuationScore]:
        """Mean log-probability of each continuation after ``accepted_text`` (one batch)."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def close(self) -> None: ...


class TextGenerator(Protocol):
    """Loaded weights of one model; thread-safe to open several sessions on."""

    name: str
    engine: str
    device: str
    load_seconds: float
    supports_concurrency: bool

    def open_session(
        self,
        prompt: PromptInput,
        *,
        style: PromptStyle | None = None,
        reuse_cache: bool = True,
        seed: int | None = None,
    ) -> GenerationSession:
        """A session continuing ``prompt`` (raw text as is; chat messages rendered the way
        ``style`` says, the model's chat template by default)."""
        ...


@dataclass(frozen=True)
class ScoringRequest:
    """Candidates of one round, to be scored as continuations of the accepted text."""

    prompt: PromptInput  # a list of ChatMessage is taken as PromptInput.chat(list)
    accepted_text: str
    candidates: list[str]
    authors: list[str]  # member name of each candidate
    author_load_keys: list[str] = field(default_factory=list)
    author_logprobs: list[list[float]] = field(default_factory=list)  # the author's own, free
    author_confidence: list[list[float]] = field(default_factory=list)  # Candidate.token_confidence
    author_self_certainty: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.prompt, list):  # chat messages given as a plain list: the chat form
            object.__setattr__(self, "prompt", PromptInput.chat(self.prompt))

    @property
    def messages(self) -> list[ChatMessage]:
        """The prompt in chat form (a raw prompt reads as one user turn), for chat readers."""
        return self.prompt.as_messages()


class Scorer(Protocol):
    """Scores candidates; higher is better. Raw scores in the scorer's documented unit; the
    combination (``ensemble_core.scorers.combined``) centres them per round and weights them."""

    name: str

    def score(self, request: ScoringRequest) -> list[float]: ...
