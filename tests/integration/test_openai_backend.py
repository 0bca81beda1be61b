"""``engine: "openai"`` against a live Ensemble-Hub (real API, queue, worker) serving one model.

The remote instance is the session's stack; ``"model": "tiny-llama"`` makes it serve that one
member. The ensemble under test runs here, in the test process, with its own pool.
"""

from __future__ import annotations

import httpx
import pytest

from ensemble_core.engine import run_ensemble
from ensemble_core.errors import GenerationError, ModelLoadError
from ensemble_core.pool import ModelPool
from ensemble_core.spec import ChatMessage, EnsembleConfig, EnsembleSpec, GenerationRequest, ModelSpec


@pytest.fixture(autouse=True)
def _allow_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test servers listen on 127.0.0.1: allowlisted as an admin would (url_policy)."""
    monkeypatch.setenv("ENSEMBLEHUB_OUTBOUND_ALLOWLIST", "127.0.0.1")


pytestmark = pytest.mark.usefixtures("show_logs_on_failure")

QUESTION = "What is 2+2?"


def _remote(stack, **options: object) -> ModelSpec:  # type: ignore[no-untyped-def]
    engine_options = {"base_url": stack.base_url + "/v1", "prompt_format": "raw", "timeout_s": 60, **options}
    return ModelSpec(path="tiny-llama", engine="openai", name="remote-llama", engine_options=engine_options)


def _request(max_tokens: int = 8) -> GenerationRequest:
    return GenerationRequest(
        messages=[ChatMessage(role="user", content=QUESTION)], max_tokens=max_tokens, temperature=0.0, seed=1
    )


def test_a_remote_member_answers_like_the_remote_itself(stack) -> None:  # type: ignore[no-untyped-def]
    direct = httpx.post(
        stack.base_url + "/v1/completions",
        json={"model": "tiny-llama", "prompt": QUESTION, "max_tokens": 8, "temperature": 0},
        timeout=120,
    )
    assert direct.status_code == 200, direct.text
    expected = direct.json()["choices"][0]["text"]

    pool = ModelPool()
    spec = _remote(stack)
    config = EnsembleConfig(
        model_selection_method="all",
        aggregation_level="response",
        aggregation_method="majority_vote",
    )
    result = run_ensemble(EnsembleSpec(model_specs=[spec]), config, _request(), pool)
    assert result.text == expected
    generator = pool.generator(spec)
    # Ensemble-Hub answers completion logprobs (issue 14), so the remote keeps asking for them
    # and its candidates carry real per-token log-probabilities
    assert generator.logprobs is True
    candidate = result.trace["rounds"][0]["candidates"][0]
    assert candidate["mean_logprob"] < 0
    usage = result.usage.per_model["remote-llama"]
    assert usage.generated > 0 and usage.prefilled > 0
    assert pool.loaded()[0]["engine"] == "openai"


def test_remote_and_local_models_take_turns(stack) -> None:  # type: ignore[no-untyped-def]
    pool = ModelPool()
    local = ModelSpec(path=stack.tiny_specs[1]["path"], name="local-gpt2", temperature=0.0)
    config = EnsembleConfig(
        model_selection_method="all",
        ensemble_method="loop",
        max_rounds=2,
        aggregation_params={"segment_tokens": 4, "segment_boundary": "none"},
    )
    result = run_ensemble(EnsembleSpec(model_specs=[_remote(stack), local]), config, _request(), pool)
    rounds = result.trace["rounds"]
    assert [r["winner"] for r in rounds] == ["remote-llama", "local-gpt2"]
    assert result.text == "".join(r["candidates"][0]["text"] for r in rounds)
    # the remote's segment was cut to segment_tokens (estimated without logprobs)
    assert rounds[0]["candidates"][0]["tokens"] <= 4


def test_unreachable_remote_fails_the_job_with_a_stable_code() -> None:
    from tests.services import free_port

    spec = ModelSpec(
        path="m",
        engine="openai",
        engine_options={"base_url": f"http://127.0.0.1:{free_port()}/v1", "max_retries": 0, "timeout_s": 2},
    )
    config = EnsembleConfig(model_selection_method="all", ensemble_method="loop", max_rounds=1)
    with pytest.raises(GenerationError) as info:
        run_ensemble(EnsembleSpec(model_specs=[spec]), config, _request(4), ModelPool())
    assert info.value.code == "generation_failed"
    assert "failed after 1 attempt" in info.value.message


def test_bad_remote_options_fail_the_load() -> None:
    for options, message in (
        ({}, "needs engine_options.base_url"),
        ({"base_url": "http://x/v1", "prompt_fromat": "raw"}, "unknown engine_options"),
        ({"base_url": "http://x/v1", "prompt_format": "nope"}, "unknown prompt_format"),
        ({"base_url": "http://x/v1", "api_key_env": "EHUB_TEST_UNSET_KEY"}, "is not set"),
    ):
        with pytest.raises(ModelLoadError, match=message):
            ModelPool().generator(ModelSpec(path="m", engine="openai", engine_options=options))
