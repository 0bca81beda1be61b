"""``echo`` with ``logprobs`` (``ensemble_core.echo``) on tiny models: a member's numbers are
its own forward pass over the raw prompt; the ensemble's follow the documented rule (the mean
distribution of the members that share the lead's vocabulary)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ensemble_core.backends.hf import HFTextGenerator
from ensemble_core.engine import run_ensemble
from ensemble_core.pool import ModelPool
from ensemble_core.spec import EnsembleConfig, EnsembleSpec, ModelSpec
from tests.unit.core.conftest import ask

PROMPT = "The capital of France is Paris"
CONFIG = EnsembleConfig()


def _reference(generator: HFTextGenerator, text: str) -> tuple[list[int], list[float]]:
    """A plain transformers forward pass over the model's own encoding of the raw text (with
    its BOS where the tokenizer adds one, as lm-eval's hf model and vLLM score it)."""
    ids = list(generator.tokenizer(text)["input_ids"])
    with torch.inference_mode():
        logits = generator.model(input_ids=torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return ids, [float(logprobs[i - 1, ids[i]]) for i in range(1, len(ids))]


def test_a_members_echo_is_its_own_forward_pass(pool: ModelPool, tiny_dirs: dict[str, Path]) -> None:
    spec = ModelSpec(path=str(tiny_dirs["llama"]), name="llama")
    generator = pool.generator(spec)
    assert isinstance(generator, HFTextGenerator)
    ids, expected = _reference(generator, PROMPT)
    result = run_ensemble(
        EnsembleSpec(model_specs=[spec]), CONFIG, ask(PROMPT, echo=True, logprobs=2, temperature=0), pool
    )
    logprobs = result.logprobs
    assert logprobs is not None
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert logprobs["token_logprobs"][1 : len(ids)] == pytest.approx(expected, abs=1e-4)
    # raw text, no chat template (after the BOS, if the tokenizer adds one)
    assert "".join(logprobs["tokens"][: len(ids)]) == generator.decode(ids, skip_special_tokens=False)
    assert generator.decode(ids) == PROMPT
    assert logprobs["text_offset"][: len(ids)] == [
        len(generator.decode(ids[:i], skip_special_tokens=False)) for i in range(len(ids))
    ]
    # one more token, the greedy one, with top-2 alternatives whose best is that token
    assert len(logprobs["tokens"]) == len(ids) + 1 and result.text == PROMPT + logprobs["tokens"][-1]
    top = logprobs["top_logprobs"][-1]
    assert len(top) == 2 and max(top.values()) == pytest.approx(logprobs["token_logprobs"][-1])
    assert result.usage.prompt_tokens == len(ids) and result.usage.completion_tokens == 1
    only = run_ensemble(EnsembleSpec(model_specs=[spec]), CONFIG, ask(PROMPT, echo=True, echo_tokens=0), pool)
    assert only.text == PROMPT and len(only.logprobs["tokens"]) == len(ids)  # type: ignore[index]


def test_the_ensembles_echo_mixes_the_members_that_share_the_leads_vocabulary(
    pool: ModelPool, tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    from tests.tiny_models import build_tiny_model

    # same tokenizer as "llama" (vocab_seed 3), other weights (seed 9)
    twin_dir = build_tiny_model(tmp_path / "twin", arch="llama", vocab_seed=3, seed=9)
    lead = ModelSpec(path=str(tiny_dirs["llama"]), name="llama")
    twin = ModelSpec(path=str(twin_dir), name="twin")
    other_dir = build_tiny_model(tmp_path / "other", arch="gpt2", vocab_size=350)
    other = ModelSpec(path=str(other_dir), name="gpt2")  # another vocabulary: left out
    spec = EnsembleSpec(model_specs=[lead, twin, other])
    result = run_ensemble(spec, CONFIG, ask(PROMPT, echo=True, echo_tokens=0), pool)
    assert result.trace["echo"]["members"] == ["llama", "twin"]
    ids, a = _reference(pool.generator(lead), PROMPT)  # type: ignore[arg-type]
    _, b = _reference(pool.generator(twin), PROMPT)  # type: ignore[arg-type]
    mixed = [math.log((math.exp(x) + math.exp(y)) / 2) for x, y in zip(a, b, strict=True)]
    assert result.logprobs["token_logprobs"][1:] == pytest.approx(mixed, abs=1e-4)  # type: ignore[index]
    assert a != pytest.approx(b, abs=1e-3), "the twin's weights differ"


def test_an_echo_of_token_ids_scores_those_ids(pool: ModelPool, tiny_dirs: dict[str, Path]) -> None:
    from ensemble_core.spec import GenerationRequest

    spec = ModelSpec(path=str(tiny_dirs["llama"]), name="llama")
    generator = pool.generator(spec)
    assert isinstance(generator, HFTextGenerator)
    ids, expected = _reference(generator, PROMPT)
    request = GenerationRequest(prompt_token_ids=ids, echo=True, logprobs=1, echo_tokens=0, temperature=0)
    result = run_ensemble(EnsembleSpec(model_specs=[spec]), CONFIG, request, pool)
    assert result.logprobs is not None
    assert result.logprobs["token_logprobs"][1:] == pytest.approx(expected, abs=1e-4)
    assert result.text == PROMPT


def test_a_bos_tokenizers_echo_starts_with_its_bos(pool: ModelPool, tmp_path: Path) -> None:
    """Gemma's tokenizer adds a BOS to a raw prompt: echo scores the prompt after it, as a
    direct forward pass of ``tokenizer(text)`` (what lm-eval's hf model does) gives."""
    from tests.tiny_models import build_tiny_model

    folder = build_tiny_model(tmp_path / "bos", arch="llama", vocab_seed=3, bos=True)
    spec = ModelSpec(path=str(folder), name="bos")
    generator = pool.generator(spec)
    assert isinstance(generator, HFTextGenerator)
    ids, expected = _reference(generator, PROMPT)
    assert ids[0] == generator.tokenizer.bos_token_id, "the fixture's tokenizer adds a BOS"
    result = run_ensemble(
        EnsembleSpec(model_specs=[spec]), CONFIG, ask(PROMPT, echo=True, echo_tokens=0), pool
    )
    assert result.logprobs is not None and len(result.logprobs["tokens"]) == len(ids)
    assert result.logprobs["token_logprobs"][1:] == pytest.approx(expected, abs=1e-3)
    assert result.text == PROMPT
