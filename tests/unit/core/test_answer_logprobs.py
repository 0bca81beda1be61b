"""``logprobs`` of generated answers (``ensemble_core.answer_logprobs``) on tiny models: a
member's numbers are its own distribution (checked against a plain transformers forward pass
over the same ids); an ensemble's tokens are its winners', each scored by its writer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ensemble_core.answer_logprobs import chat_logprobs
from ensemble_core.backends.hf import HFTextGenerator
from ensemble_core.engine import run_ensemble
from ensemble_core.pool import ModelPool
from ensemble_core.spec import EnsembleConfig, EnsembleSpec, ModelSpec, PromptInput
from tests.unit.core.conftest import ask

PROMPT = "The capital of France is"


def _forward(generator: HFTextGenerator, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        logits = generator.model(input_ids=torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def test_a_members_answer_logprobs_are_its_own_distribution(
    pool: ModelPool, tiny_dirs: dict[str, Path]
) -> None:
    # decoding alone (no batch with other tests' open sessions), so that greedy near-ties in a
    # random tiny model resolve as in the plain forward passes below
    spec = ModelSpec(path=str(tiny_dirs["llama"]), name="llama", engine_options={"batch_across_jobs": False})
    generator = pool.generator(spec)
    assert isinstance(generator, HFTextGenerator)
    request = ask(PROMPT, max_tokens=12, temperature=0, logprobs=3, ignore_eos=True)
    config = EnsembleConfig()
    result = run_ensemble(EnsembleSpec(model_specs=[spec]), config, request, pool)
    lp = result.logprobs
    assert lp is not None and len(lp["tokens"]) == 12 == result.usage.completion_tokens
    assert "".join(lp["tokens"]) == result.text
    assert lp["text_offset"] == [len("".join(lp["tokens"][:i])) for i in range(12)]
    assert set(lp["models"]) == {"llama"}
    prompt_ids = generator.encode_prompt(generator.render(PromptInput.chat(request.messages or [])))
    ids, rows = list(prompt_ids), []
    for _ in range(12):  # plain greedy decoding, one full forward pass per token
        row = _forward(generator, ids)[-1]
        rows.append(row)
        ids.append(int(row.argmax()))
    answer_ids = ids[len(prompt_ids) :]
    assert generator.decode(answer_ids) == result.text
    expected = [float(row[t]) for row, t in zip(rows, answer_ids, strict=True)]
    assert lp["token_logprobs"] == pytest.approx(expected, abs=1e-3)
    for i, top in enumerate(lp["top_logprobs"]):
        row = rows[i]
        assert len(top) <= 3 and list(top.values()) == pytest.approx(
            row.topk(3).values.tolist()[: len(top)], abs=1e-3
        )
        # greedy: the chosen token is the most likely one
        assert max(top.values()) == pytest.approx(lp["token_logprobs"][i], abs=1e-5)
    chat = chat_logprobs(lp)["content"]
    assert [c["token"] for c in chat] == lp["tokens"] and chat[0]["bytes"] == list(lp["tokens"][0].encode())
    assert chat[0]["top_logprobs"][0]["logprob"] >= chat[0]["top_logprobs"][-1]["logprob"]
    # without logprobs nothing is computed or returned
    plain = run_ensemble(EnsembleSpec(model_specs=[spec]), config, ask(PROMPT, max_tokens=4), pool)
    assert plain.logprobs is None


def test_an_ensembles_tokens_are_the_winners_each_scored_by_its_writer(
    pool: ModelPool, tiny_dirs: dict[str, Path]
) -> None:
    specs = [
        ModelSpec(path=str(tiny_dirs["llama"]), name="llama"),
        ModelSpec(path=str(tiny_dirs["gpt2"]), name="gpt2"),
    ]
    config = EnsembleConfig(
        model_selection_method="all",
        aggregation_method="round_robin",
        aggregation_params={"segment_tokens": 3, "segment_boundary": "none"},
    )
    request = ask(PROMPT, max_tokens=12, temperature=0, logprobs=1, ignore_eos=True)
    result = run_ensemble(EnsembleSpec(model_specs=specs), config, request, pool)
    lp = result.logprobs
    assert lp is not None
    winners = [r["winner"] for r in result.trace["rounds"]]
    assert set(winners) == {"llama", "gpt2"}
    assert "".join(lp["tokens"]) == result.text
    # each round's 3 tokens are named after its writer, in order
    assert lp["models"] == [w for w in winners for _ in range(3)]
    assert all(v <= 0 for v in lp["token_logprobs"])
    assert all(
        max(t.values()) == pytest.approx(v, abs=1e-5)
        for t, v in zip(lp["top_logprobs"], lp["token_logprobs"], strict=True)
    )
