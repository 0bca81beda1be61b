"""Raw prompts and per-member prompt styles on tiny real models.

A raw prompt (``/v1/completions``) reaches the model as ``tokenizer(prompt)`` ids, no chat
template; a ``prompt_format: raw`` member (a base model) reads a chat request as plain
"Question: ... / Answer:" text and ends its answer where it would start the next turn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from ensemble_core.engine import run_ensemble
from ensemble_core.pool import ModelPool
from ensemble_core.ports import Sampling, SegmentLimits
from ensemble_core.prompting import DEFAULT_RAW_STOP, render_chat
from ensemble_core.spec import (
    ChatMessage,
    EnsembleConfig,
    EnsembleSpec,
    GenerationRequest,
    ModelSpec,
    PromptInput,
)
from tests.tiny_models import build_tiny_model

RAW = "The capital of France is"
CHAT = [
    ChatMessage(role="system", content="Answer briefly."),
    ChatMessage(role="user", content="What is 2+2?"),
]
RENDERED_TURNS = "Answer briefly.\n\nQuestion: What is 2+2?\nAnswer:"


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose tokenizer adds a BOS to plain text (as Gemma's does)."""
    return build_tiny_model(tmp_path_factory.mktemp("base") / "m", arch="llama", vocab_seed=3, bos=True)


@pytest.fixture(scope="module")
def base_spec(base_dir: Path) -> ModelSpec:
    return ModelSpec(path=str(base_dir), name="base", temperature=0.0, prompt_format="raw")


def _first_forward_ids(generator: Any) -> tuple[list[list[int]], Any]:
    """Record the input ids of every forward pass of ``generator``'s model."""
    seen: list[list[int]] = []

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        seen.append(kwargs["input_ids"][0].tolist())

    return seen, generator.model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("which", ["base", "llama", "gpt2"])
def test_a_raw_prompt_reaches_the_model_as_the_tokenizer_spells_it(
    which: str, base_dir: Path, tiny_dirs: dict[str, Path], pool: ModelPool
) -> None:
    path = base_dir if which == "base" else tiny_dirs[which]
    generator = pool.generator(ModelSpec(path=str(path), name=which))
    expected = list(generator.tokenizer(RAW)["input_ids"])
    if which == "base":
        assert expected[0] == generator.tokenizer.bos_token_id  # the case that needs care
    seen, handle = _first_forward_ids(generator)
    try:
        session = generator.open_session(PromptInput.raw(RAW), seed=0)
        session.generate("", [Sampling(0.0)], SegmentLimits(max_new_tokens=3, boundary="none"))
    finally:
        handle.remove()
    assert seen[0] == expected, "the prefill is the raw tokenization: no chat template"
    assert session.counters.prompt_tokens == len(expected)
    # the chat form of the same text is longer: it went through the template
    chat = generator.open_session(PromptInput.chat([ChatMessage(role="user", content=RAW)]))
    assert chat.prompt_text.startswith("<|im_start|>user\n") and len(chat.prompt_ids) > len(expected)


def test_a_base_member_reads_a_chat_request_as_question_and_answer_text(
    base_spec: ModelSpec, pool: ModelPool
) -> None:
    generator = pool.generator(base_spec)
    session = generator.open_session(PromptInput.chat(CHAT), style=base_spec.prompt_style())
    assert session.prompt_text == RENDERED_TURNS
    assert session.prompt_ids == list(generator.tokenizer(RENDERED_TURNS)["input_ids"])
    assert session.rendered.stop_strings == DEFAULT_RAW_STOP
    # another member's accepted "4" continues "Answer: 4", as the base model would write it
    seen, handle = _first_forward_ids(generator)
    try:
        session.generate("4", [Sampling(0.0)], SegmentLimits(max_new_tokens=2, boundary="none"))
    finally:
        handle.remove()
    assert seen[0] == list(generator.tokenizer(RENDERED_TURNS + " 4")["input_ids"])


def test_a_custom_turn_template_and_its_stop_strings_end_the_member_s_answer(
    base_dir: Path, pool: ModelPool
) -> None:
    template = "{% for m in messages %}{{ m.role }}> {{ m.content }}\n{% endfor %}bot>"
    free = ModelSpec(
        path=str(base_dir), name="free", temperature=0.0, prompt_format="raw", raw_template=template
    )
    limits = SegmentLimits(max_new_tokens=12, boundary="none")
    generator = pool.generator(free)
    session = generator.open_session(PromptInput.chat(CHAT), style=free.prompt_style())
    assert session.prompt_text == "system> Answer briefly.\nuser> What is 2+2?\nbot>"
    greedy = session.generate("", [Sampling(0.0)], limits)[0]
    assert len(greedy.text) > 4
    stop = greedy.text[2:4]  # a string the greedy answer is known to write
    stopped_spec = free.model_copy(update={"raw_stop": [stop]})
    stopped = generator.open_session(PromptInput.chat(CHAT), style=stopped_spec.prompt_style())
    candidate = stopped.generate("", [Sampling(0.0)], limits)[0]
    assert candidate.finish == "stop_string" and candidate.stop_string == stop
    assert candidate.text == greedy.text[: greedy.text.index(stop)]


def _config(**fields: Any) -> EnsembleConfig:
    return EnsembleConfig(model_selection_method="all", max_rounds=6, **fields)


LEVELS = {
    "sentence": {"ensemble_method": "round_robin", "aggregation_params": {"segment_tokens": 3}},
    "token": {"aggregation_level": "token", "aggregation_method": "gac"},
    "response": {"aggregation_level": "response", "aggregation_method": "majority_vote"},
}


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_every_level_continues_a_raw_prompt_without_a_template(
    level: str, tiny_dirs: dict[str, Path], pool: ModelPool
) -> None:
    llama = ModelSpec(path=str(tiny_dirs["llama"]), name="llama", temperature=0.0)
    gpt2 = ModelSpec(path=str(tiny_dirs["gpt2"]), name="gpt2", temperature=0.0)
    request = GenerationRequest(prompt=RAW, max_tokens=8, temperature=0.0, seed=1)
    result = run_ensemble(EnsembleSpec(model_specs=[llama, gpt2]), _config(**LEVELS[level]), request, pool)
    tokenizer = pool.generator(llama).tokenizer
    assert result.usage.per_model["llama"].prompt == len(tokenizer(RAW)["input_ids"])
    chat = GenerationRequest(messages=[ChatMessage(role="user", content=RAW)], max_tokens=8, temperature=0.0)
    templated = run_ensemble(EnsembleSpec(model_specs=[llama, gpt2]), _config(**LEVELS[level]), chat, pool)
    assert templated.usage.per_model["llama"].prompt > result.usage.per_model["llama"].prompt


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_a_base_member_sits_in_a_chat_ensemble_at_every_level(
    level: str, base_spec: ModelSpec, tiny_dirs: dict[str, Path], pool: ModelPool
) -> None:
    chat_member = ModelSpec(path=str(tiny_dirs["gpt2"]), name="chat", temperature=0.0)
    request = GenerationRequest(messages=CHAT, max_tokens=8, temperature=0.0, seed=1)
    spec = EnsembleSpec(model_specs=[base_spec, chat_member])
    result = run_ensemble(spec, _config(**LEVELS[level]), request, pool)
    usage = result.usage.per_model
    tokenizer = pool.generator(base_spec).tokenizer
    assert usage["base"].prompt == len(tokenizer(RENDERED_TURNS)["input_ids"])
    chat_generator = pool.generator(chat_member)
    templated = render_chat(chat_generator.tokenizer, CHAT)
    assert usage["chat"].prompt == len(chat_generator.encode(templated))  # the other keeps its template
    assert usage["base"].generated > 0 and usage["chat"].generated > 0


def test_one_set_of_weights_read_two_ways_gets_two_sessions(base_dir: Path, pool: ModelPool) -> None:
    as_chat = ModelSpec(path=str(base_dir), name="as-chat", temperature=0.0)
    as_raw = ModelSpec(path=str(base_dir), name="as-raw", temperature=0.0, prompt_format="raw")
    assert as_chat.load_key() == as_raw.load_key()  # one load
    request = GenerationRequest(messages=CHAT, max_tokens=4, temperature=0.0)
    config = _config(aggregation_level="response", aggregation_method="majority_vote")
    result = run_ensemble(EnsembleSpec(model_specs=[as_chat, as_raw]), config, request, pool)
    weights = {name: m["weights"] for name, m in result.trace["members"].items()}
    assert weights == {"as-chat": "as-chat", "as-raw": "as-raw"}


def test_a_request_carries_exactly_one_prompt_form() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        GenerationRequest(prompt="x", messages=CHAT)
    with pytest.raises(ValidationError, match="exactly one"):
        GenerationRequest()
    with pytest.raises(ValidationError):
        ModelSpec(path="x", prompt_format="base")  # type: ignore[arg-type]
    assert GenerationRequest(prompt="x").prompt_input() == PromptInput.raw("x")


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_a_token_id_prompt_is_used_as_given_and_answers_as_its_text(
    level: str, tiny_dirs: dict[str, Path], pool: ModelPool
) -> None:
    llama = ModelSpec(path=str(tiny_dirs["llama"]), name="llama", temperature=0.0)
    twin = ModelSpec(path=str(tiny_dirs["llama"]), name="twin", temperature=0.0)
    generator = pool.generator(llama)
    if generator.shared_prefixes is not None:
        generator.shared_prefixes.clear()  # the whole prompt goes through the first forward pass
    ids = list(generator.tokenizer(RAW)["input_ids"])
    seen, handle = _first_forward_ids(generator)
    try:
        spec, config = EnsembleSpec(model_specs=[llama, twin]), _config(**LEVELS[level])
        by_ids = run_ensemble(
            spec, config, GenerationRequest(prompt_token_ids=ids, max_tokens=6, temperature=0.0), pool
        )
    finally:
        handle.remove()
    assert seen[0][: len(ids)] == ids
    by_text = run_ensemble(spec, config, GenerationRequest(prompt=RAW, max_tokens=6, temperature=0.0), pool)
    assert by_ids.text == by_text.text
    assert by_ids.usage.per_model["llama"].prompt == len(ids)


@pytest.mark.slow
def test_the_bundled_models_take_raw_text_as_their_tokenizers_spell_it() -> None:
    """Gemma's tokenizer puts a BOS before plain text (a base model needs it), SmolLM2's
    nothing; a raw prompt gets exactly that, as vLLM's /v1/completions does."""
    from ensemble_core.backends.hf_loading import load_tokenizer
    from ensemble_core.prompting import leading_special_ids

    gemma = load_tokenizer(ModelSpec(path="bundled:gemma3-270m"), None)
    smollm2 = load_tokenizer(ModelSpec(path="bundled:smollm2"), None)
    assert leading_special_ids(gemma) == [gemma.bos_token_id]
    assert leading_special_ids(smollm2) == []
