"""``engine: "openai"``: a ``TextGenerator`` over any OpenAI-compatible server's completions.

A vLLM server, another Ensemble-Hub, a hosted API: the model is reached over HTTP, so nothing is
loaded here. ``ModelSpec.path`` is the remote model name unless ``engine_options.model`` says
otherwise. ``engine_options``:

- ``base_url`` (required): the API root as OpenAI clients take it, e.g. ``http://host:8000/v1``;
- ``api_key`` or ``api_key_env`` (the name of an environment variable holding it; better than
  storing a secret in a config version): sent as ``Authorization: Bearer``;
- ``prompt_format``: where a chat prompt goes. ``chat`` (default): the remote's
  ``/chat/completions``, with its own chat template (see ``openai_chat``; no echo there, so
  continuation scores are NaN and ``zscore`` cannot select this member). Otherwise the chat is
  rendered here into one ``/completions`` prompt: ``raw`` (the messages' text joined),
  ``chatml``, ``plain`` (``role: content`` lines), or a Jinja chat template string
  (``messages``, ``add_generation_prompt``). A member's own ``prompt_format: raw`` (turn
  template) or ``chat_template`` wins. A raw prompt (``/v1/completions``) always goes to the
  remote's ``/completions`` as it is;
- ``logprobs`` (default true): ask for token log-probabilities; a server that refuses them
  (HTTP 400 naming ``logprobs``) is asked again without, and never again;
- ``timeout_s`` (default 60), ``max_retries`` (default 2; connection errors, 429 and 5xx, with
  backoff), ``headers`` (extra HTTP headers).

Segments: the request asks for ``max_new_tokens`` tokens; the text is then cut at the first
segment boundary or stop string exactly as the local backends do it, token by token when the
server returned tokens (logprobs), else word by word. Remote token ids are unknown: candidates
carry ``-1`` per token (their count is what matters to the engine). Without logprobs the
token count of a cut candidate is estimated from the server's ``usage``.
Scoring (``score_continuations``, ``prompt_statistics``) needs ``echo`` with logprobs (vLLM has
it); without it continuation scores are NaN (neutral for the likelihood scorer) and prompt
statistics raise ``GenerationError`` (use another selector than ``zscore``).
``base_url`` is under the outbound policy (``ensemble_core.url_policy``): http(s) only, each
request resolved once and sent to the vetted address, no redirects followed, no internal
address (a vLLM server on 127.0.0.1 included) unless ``ENSEMBLEHUB_OUTBOUND_ALLOWLIST`` names it.
"""

from __future__ import annotations

import math
import os
import random
import re
import threading
import time
from dataclasses import replace
from typing import Any

import httpx

from ensemble_core.backends.openai_chat import as_completion_choice, chat_body
from ensemble_core.errors import GenerationError, ModelLoadError
from ensemble_core.ports import (
    Candidate,
    CandidateFinish,
    ContinuationScore,
    PromptStatistics,
    Sampling,
    SegmentLimits,
    SessionCounters,
)
from ensemble_core.prompting import RenderedPrompt, with_stops
from ensemble_core.prompting import render_prompt as render_member_prompt
from ensemble_core.segment_text import check_candidate
from ensemble_core.spec import ChatMessage, ModelSpec, PromptInput, PromptStyle
from ensemble_core.url_policy import URLRefused, check_url, guarded_client, outbound_allowlist

KNOWN_ENGINE_OPTIONS = frozenset(
    {
        "base_url",
        "api_key",
        "api_key_env",
        "model",
        "prompt_format",
        "logprobs",
        "timeout_s",
        "max_retries",
        "headers",
    }
)
_RETRY_STATUS = {429, 500, 502, 503, 504}
_WORD = re.compile(r"\s*\S+|\s+")  # a word with the spaces before it, like most tokens
TOP_LOGPROBS = 5


class RemoteRejected(GenerationError):
    """The server answered 4xx: the request itself is wrong (not retried)."""


def render_prompt(messages: list[ChatMessage], prompt_format: str) -> str:
    """The chat as one completion prompt, ready for the assistant's answer."""
    if prompt_format == "raw":
        return "\n\n".join(m.content for m in messages)
    if prompt_format == "chatml":
        turns = "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages)
        return turns + "<|im_start|>assistant\n"
    if prompt_format == "plain":
        return "".join(f"{m.role}: {m.content}\n" for m in messages) + "assistant: "
    if "{{" in prompt_format or "{%" in prompt_format:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        template = ImmutableSandboxedEnvironment().from_string(prompt_format)
        payload = [{"role": m.role, "content": m.content} for m in messages]
        return str(template.render(messages=payload, add_generation_prompt=True, bos_token="", eos_token=""))
    raise ModelLoadError(
        f"unknown prompt_format {prompt_format!r}; use raw, chatml, plain or a Jinja chat template"
    )


class OpenAITextGenerator:
    """A remote model behind ``{base_url}/completions``; sessions are cheap (no state remotely)."""

    engine = "openai"
    supports_concurrency = True

    def __init__(self, spec: ModelSpec, cache_dir: Any = None) -> None:
        started = time.perf_counter()
        options = dict(spec.engine_options)
        unknown = set(options) - KNOWN_ENGINE_OPTIONS
        if unknown:
            raise ModelLoadError(
                f"unknown engine_options {sorted(unknown)} for {spec.display_name!r}; valid: {sorted(KNOWN_ENGINE_OPTIONS)}"
            )
        base_url = options.get("base_url")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ModelLoadError(
                f"{spec.display_name!r}: engine 'openai' needs engine_options.base_url (http(s)://host/v1)"
            )
        try:  # scheme and credentials now; the address is vetted at each request
            check_url(base_url, outbound_allowlist(), resolve=False, what="engine_options.base_url")
        except URLRefused as exc:
            if "does not resolve" not in str(exc):  # a name is resolved when it is called
                raise ModelLoadError(f"{spec.display_name!r}: {exc}") from exc
        headers = {str(k): str(v) for k, v in dict(options.get("headers") or {}).items()}
        api_key = options.get("api_key")
        if options.get("api_key_env"):
            api_key = os.environ.get(str(options["api_key_env"]))
            if not api_key:
                raise ModelLoadError(
                    f"{spec.display_name!r}: environment variable {options['api_key_env']!r} is not set"
                )
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.spec = spec
        self.name = spec.display_name
        self.model = str(options.get("model") or spec.path)
        self.prompt_format = str(options.get("prompt_format", "chat"))
        if self.prompt_format != "chat":  # fail now, not mid-job
            render_prompt([ChatMessage(role="user", content="x")], self.prompt_format)
        self.max_retries = int(options.get("max_retries", 2))
        self.logprobs: bool = bool(options.get("logprobs", True))
        self.echo: bool | None = None  # unknown until tried
        self.client = guarded_client(
            what="engine_options.base_url",
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=float(options.get("timeout_s", 60.0)),
        )
        self.device = f"remote:{httpx.URL(base_url).host}"
        self.lock = threading.Lock()
        self.load_seconds = time.perf_counter() - started

    def open_session(
        self,
        prompt: PromptInput,
        *,
        style: PromptStyle | None = None,
        reuse_cache: bool = True,
        seed: int | None = None,
    ) -> OpenAIGenerationSession:
        return OpenAIGenerationSession(self, prompt, style=style, seed=seed)

    def render(self, prompt: PromptInput, style: PromptStyle | None) -> RenderedPrompt:
        """A raw prompt goes to the remote's ``/completions`` as is (the remote adds its own
        BOS); chat is rendered here: the member's raw turn template or ``chat_template``, else
        ``engine_options.prompt_format``."""
        style = style or PromptStyle()
        if prompt.messages is None or style.format == "raw":
            rendered = render_member_prompt(prompt, style, None)
            return replace(rendered, add_special_tokens=False)
        template = style.chat_template or self.prompt_format
        if template == "chat":  # the server renders it; this text only estimates token counts
            template = "plain"
        return RenderedPrompt(render_prompt(prompt.messages, template), add_special_tokens=False)

    def uses_chat_endpoint(self, prompt: PromptInput, style: PromptStyle | None) -> bool:
        style = style or PromptStyle()
        return (
            prompt.messages is not None
            and style.format == "chat"
            and style.chat_template is None
            and self.prompt_format == "chat"
        )

    # -- HTTP -------------------------------------------------------------------------------
    def complete(self, payload: dict[str, Any], path: str = "/completions") -> dict[str, Any]:
        """POST ``path`` with retries; a refused ``logprobs`` is dropped once and for all."""
        body = {"model": self.model, **payload}
        if "logprobs" in body and not self.logprobs:
            body.pop("logprobs")
            body.pop("top_logprobs", None)
        try:
            return self._post(body, path)
        except RemoteRejected as exc:
            if "logprobs" in body and "logprobs" in exc.message:
                self.logprobs = False
                body.pop("logprobs")
                body.pop("top_logprobs", None)
                return self._post(body, path)
            raise

    def _post(self, body: dict[str, Any], path: str = "/completions") -> dict[str, Any]:
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(0.2 * 2 ** (attempt - 1))
            started = time.perf_counter()
            try:
                response = self.client.post(path, json=body)
            except URLRefused as exc:
                raise RemoteRejected(f"{self.name}: refused by the outbound URL policy: {exc}") from exc
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code in _RETRY_STATUS:
                # the answer's body is not echoed: a job's error reaches its tenant
                last = f"HTTP {response.status_code} after {(time.perf_counter() - started) * 1000:.0f} ms"
                continue
            if 300 <= response.status_code < 400:
                raise RemoteRejected(
                    f"{self.name}: the server redirected (HTTP {response.status_code}); redirects are not followed"
                )
            if response.status_code >= 400:
                raise RemoteRejected(
                    f"{self.name}: the server refused the request (HTTP {response.status_code}): {_error_message(response)}"
                )
            try:
                data = response.json()
                if not data.get("choices"):
                    raise ValueError("no choices")
                return dict(data)
            except ValueError as exc:
                raise GenerationError(f"{self.name}: malformed completion response: {exc}") from exc
        raise GenerationError(
            f"{self.name}: {self.client.base_url} failed after {self.max_retries + 1} attempt(s): {last}"
        )


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        if isinstance(error, dict):
            return f"{error.get('message', '')} (param {error.get('param')!r})"
        if error:
            return str(error)[:300]
    except (ValueError, AttributeError):
        pass
    return "no OpenAI error envelope in the answer"  # the body itself is not echoed


class OpenAIGenerationSession:
    """One job's requests to the remote model: the rendered prompt, a seeded RNG, counters."""

    def __init__(
        self,
        generator: OpenAITextGenerator,
        prompt: PromptInput,
        *,
        style: PromptStyle | None,
        seed: int | None,
    ) -> None:
        self.generator = generator
        self.rendered = generator.render(prompt, style)
        self.chat = list(prompt.messages or []) if generator.uses_chat_endpoint(prompt, style) else None
        self.prompt_text = self.rendered.text
        self.rng = random.Random(seed if seed is not None else 0)
        self.counters = SessionCounters(prompt_tokens=self.count_tokens(self.prompt_text))
        self._prompt_counted = False

    def count_tokens(self, text: str) -> int:
        """An estimate (4 bytes a token): the remote tokenizer is not available here."""
        return max(1, round(len(text.encode("utf-8")) / 4)) if text else 0

    def generate(
        self, accepted_text: str, samplings: list[Sampling], limits: SegmentLimits
    ) -> list[Candidate]:
        if not samplings or limits.max_new_tokens <= 0:
            return []
        limits = with_stops(limits, self.rendered)
        return [self._one(accepted_text, sampling, limits) for sampling in samplings]

    def _one(self, accepted_text: str, sampling: Sampling, limits: SegmentLimits) -> Candidate:
        fields: dict[str, Any] = {
            "max_tokens": limits.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": self.rng.randrange(2**31),
            **_remote_fields(sampling, limits),
            **_remote_format(limits, accepted_text),
        }
        if self.chat is not None:
            body = chat_body(self.chat, accepted_text, fields, TOP_LOGPROBS)
            data = self.generator.complete(body, path="/chat/completions")
            choice = as_completion_choice(data["choices"][0])
        else:
            # the top 5 (OpenAI's most for completions) give DeepConf's token confidence
            payload = {"prompt": self.rendered.join(accepted_text), **fields, "logprobs": TOP_LOGPROBS}
            data = self.generator.complete(payload)
            choice = data["choices"][0]
        self.counters.forward_passes += 1
        usage = data.get("usage") or {}
        if not self._prompt_counted and usage.get("prompt_tokens"):
            self.counters.prompt_tokens = int(usage["prompt_tokens"])
            self._prompt_counted = True
        sent = self.rendered.join(accepted_text)
        self.counters.prefilled += int(usage.get("prompt_tokens") or self.count_tokens(sent))
        text = str(choice.get("text") or "")
        logprobs = choice.get("logprobs") or {}
        tokens = [str(t) for t in (logprobs.get("tokens") or [])]
        values = [float(v) if v is not None else 0.0 for v in (logprobs.get("token_logprobs") or [])]
        confidence = _token_confidence(logprobs.get("top_logprobs"), len(values))
        if not tokens or "".join(tokens) != text:  # no usable tokens: cut word by word
            tokens, values, confidence = _WORD.findall(text), [], []
            total = int(usage.get("completion_tokens") or self.count_tokens(text))
        else:
            total = len(tokens)
        self.counters.generated += total
        candidate = _cut(tokens, values, total, limits, accepted_text[-64:])
        if candidate is None:
            finish: CandidateFinish = "eos" if choice.get("finish_reason") == "stop" else "length"
            candidate = Candidate(text, [-1] * total, values, finish)
        candidate.token_confidence = confidence[: len(candidate.token_logprobs)]
        return candidate

    def score_continuations(self, accepted_text: str, continuations: list[str]) -> list[ContinuationScore]:
        prefix = self.rendered.join(accepted_text)
        scores = []
        for continuation in continuations:
            full = self.rendered.join(accepted_text + continuation)
            offsets, values, _ = self._echo(full)
            kept = [v for o, v in zip(offsets, values, strict=True) if len(prefix) <= o < len(full)]
            if not kept:
                scores.append(ContinuationScore(mean_logprob=math.nan, tokens=0))
                continue
            self.counters.scored += len(kept)
            scores.append(ContinuationScore(mean_logprob=sum(kept) / len(kept), tokens=len(kept)))
        return scores

    def prompt_statistics(self) -> PromptStatistics:
        offsets, values, tops = self._echo(self.prompt_text)
        # the first token has no log-probability (nothing before it): _echo left it out
        inside = [(v, t) for o, v, t in zip(offsets, values, tops, strict=True) if o < len(self.prompt_text)]
        if not inside:
            raise GenerationError(
                f"{self.generator.name}: the server gives no prompt log-probabilities (echo), which "
                "zscore selection needs; use another model_selection_method for remote models"
            )
        return PromptStatistics(
            mean_nll=-sum(v for v, _ in inside) / len(inside),
            mean_top1_prob=sum(math.exp(t) for _, t in inside) / len(inside),
            tokens=len(inside) + 1,
        )

    def _echo(self, prompt: str) -> tuple[list[int], list[float], list[float]]:
        """Text offsets, log-probabilities and top-1 log-probabilities of ``prompt``'s tokens."""
        generator = self.generator
        if generator.echo is False or not generator.logprobs or self.chat is not None:
            return [], [], []
        try:
            data = generator.complete(
                {"prompt": prompt, "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0}
            )
        except RemoteRejected:
            generator.echo = False
            return [], [], []
        logprobs = data["choices"][0].get("logprobs") or {}
        offsets = list(logprobs.get("text_offset") or [])
        raw = list(logprobs.get("token_logprobs") or [])
        if not offsets or len(offsets) != len(raw):
            generator.echo = False
            return [], [], []
        generator.echo = True
        self.counters.forward_passes += 1
        tops = [
            max(d.values()) if isinstance(d, dict) and d else (v if v is not None else 0.0)
            for d, v in zip(logprobs.get("top_logprobs") or [None] * len(raw), raw, strict=True)
        ]
        pairs = [
            (int(o), float(v), float(t)) for o, v, t in zip(offsets, raw, tops, strict=True) if v is not None
        ]
        return [p[0] for p in pairs], [p[1] for p in pairs], [p[2] for p in pairs]

    def close(self) -> None:
        pass


def _remote_fields(sampling: Sampling, limits: SegmentLimits) -> dict[str, Any]:
    """The request's other sampling fields, sent on where they are not neutral: OpenAI's names
    (penalties, ``logit_bias``) and vLLM's extras, which a vLLM server honours."""
    fields: dict[str, Any] = {}
    if sampling.presence_penalty:
        fields["presence_penalty"] = sampling.presence_penalty
    if sampling.frequency_penalty:
        fields["frequency_penalty"] = sampling.frequency_penalty
    if sampling.logit_bias:
        fields["logit_bias"] = {str(token): bias for token, bias in sampling.logit_bias}
    if sampling.top_k > 0:
        fields["top_k"] = sampling.top_k
    if sampling.min_p > 0:
        fields["min_p"] = sampling.min_p
    if sampling.repetition_penalty != 1.0:
        fields["repetition_penalty"] = sampling.repetition_penalty
    if limits.eos_after > 0:
        fields["min_tokens"] = limits.eos_after
    if limits.ignore_eos:
        fields["ignore_eos"] = True
    if limits.stop_token_ids:
        fields["stop_token_ids"] = list(limits.stop_token_ids)
    return fields


def _remote_format(limits: SegmentLimits, accepted_text: str) -> dict[str, Any]:
    """Structured output passed through as ``response_format`` (a JSON schema; a tool call as
    the schema of its JSON). The server's grammar starts at the answer's beginning, so it can
    only write an answer in one piece: it cannot continue one that another segment began."""
    grammar = limits.grammar
    if grammar is None:
        return {}
    if accepted_text or grammar.kind == "tool_auto":
        raise GenerationError(
            "a remote (openai engine) member can write a structured answer only in one piece "
            "(tool_choice other than auto, and segment_boundary none or a response-level method)"
        )
    if grammar.kind == "json_object":
        return {"response_format": {"type": "json_object"}}
    schema = {"name": "answer", "schema": grammar.json_schema(), "strict": grammar.strict}
    return {"response_format": {"type": "json_schema", "json_schema": schema}}


def _token_confidence(top_logprobs: Any, count: int) -> list[float]:
    """DeepConf token confidence per token (minus the mean of the returned top log-probabilities);
    empty when the server sent no top log-probabilities for every token."""
    if not isinstance(top_logprobs, list) or len(top_logprobs) != count:
        return []
    out = []
    for entry in top_logprobs:
        if not isinstance(entry, dict) or not entry:
            return []
        values = [float(v) for v in entry.values() if v is not None]
        out.append(-sum(values) / len(values) if values else 0.0)
    return out


def _cut(
    pieces: list[str], values: list[float], total: int, limits: SegmentLimits, tail: str
) -> Candidate | None:
    """The candidate ended at its first boundary or stop string, or None when none occurs."""
    text = ""
    for i, piece in enumerate(pieces):
        text += piece
        count = i + 1 if values else max(1, round(total * len(text) / max(len("".join(pieces)), 1)))
        finish, stop = check_candidate(text, count, limits, tail)
        if finish is None or finish == "length":  # the server applied max_tokens itself
            continue
        candidate = Candidate(text, [-1] * count, values[: i + 1], finish)
        if stop is not None:
            candidate.text = text[: stop.keep_chars]
            candidate.stop_string = stop.string
            candidate.trim_accepted = stop.trim_accepted
        return candidate
    return None
