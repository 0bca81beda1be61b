"""The official ``openai`` Python package, unchanged, against the live service (real worker)."""

from __future__ import annotations

import httpx
import openai
import pytest

pytestmark = pytest.mark.usefixtures("show_logs_on_failure")

MEMBERS = {"tiny-llama", "tiny-gpt2"}


@pytest.fixture(scope="module")
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url + "/v1", api_key="not-needed", max_retries=0, timeout=120)


def test_chat_completion_keeps_every_turn_and_reports_real_usage(client, stack):
    response = client.chat.completions.create(
        model="ensemble",
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4."},
            {"role": "user", "content": "And 3+3?"},
        ],
        max_tokens=8,
        temperature=0.5,
        top_p=0.9,
        seed=7,
    )
    assert response.object == "chat.completion"
    choice = response.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    metadata = choice.model_extra["metadata"]
    assert set(metadata["selected_models"]) <= MEMBERS and metadata["method"]
    assert response.usage.completion_tokens > 0 and response.usage.prompt_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens

    job = httpx.get(f"{stack.base_url}/v1/jobs/{response.id}").json()
    roles = [m["role"] for m in job["request"]["generation"]["messages"]]
    assert roles == ["system", "user", "assistant", "user"], "all turns reach the worker"
    generation = job["request"]["generation"]
    assert (generation["temperature"], generation["top_p"], generation["seed"], generation["max_tokens"]) == (
        0.5,
        0.9,
        7,
        8,
    )
    assert job["result"]["text"] == choice.message.content


def test_chat_completion_stream_names_the_model_of_each_chunk(client, stack):
    stream = client.chat.completions.create(
        model="ensemble",
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ensemble_config": {"aggregation_params": {"segment_tokens": 4}}},
    )
    pieces, writers, finish, usage, job_id = [], [], None, None, None
    for chunk in stream:
        job_id = chunk.id
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
                writers.append(choice.model_extra["metadata"]["model"])
            if choice.finish_reason:
                finish = choice.finish_reason
    assert len(pieces) >= 2, "several segments arrive as separate chunks"
    assert set(writers) <= MEMBERS and writers[0] in MEMBERS
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens > 0
    job = httpx.get(f"{stack.base_url}/v1/jobs/{job_id}").json()
    assert "".join(pieces) == job["result"]["text"], "the stream adds up to the stored answer"
    winners = [r["winner"] for r in job["result"]["trace"]["rounds"] if r.get("accepted", True)]
    # the loop streams token by token: each round's writer names its chunks, in order
    runs = [w for i, w in enumerate(writers) if i == 0 or writers[i - 1] != w]
    assert runs == [w for i, w in enumerate(winners) if i == 0 or winners[i - 1] != w]
    assert len(writers) >= len(winners)


def test_legacy_completions(client):
    response = client.completions.create(model="ensemble", prompt="Once upon a time", max_tokens=6)
    assert response.object == "text_completion"
    assert response.choices[0].text
    assert response.usage.completion_tokens > 0


def test_legacy_completions_continue_the_raw_prompt_with_no_chat_template(client, stack):
    from transformers import AutoTokenizer

    prompt = "Once upon a time"
    response = client.completions.create(model="tiny-llama", prompt=prompt, max_tokens=3, temperature=0)
    tokenizer = AutoTokenizer.from_pretrained(stack.tiny_specs[0]["path"])
    assert response.usage.prompt_tokens == len(tokenizer(prompt)["input_ids"])
    chat = client.chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": prompt}], max_tokens=3, temperature=0
    )
    assert chat.usage.prompt_tokens > response.usage.prompt_tokens  # the chat template's turns


def test_a_list_of_prompts_gets_n_choices_each_numbered_as_openai_does(client):
    prompts = ["Once upon a time", "The capital of France is"]
    fields = {"model": "tiny-llama", "max_tokens": 3, "temperature": 0, "n": 2}
    response = client.completions.create(prompt=prompts, **fields)
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    alone = [client.completions.create(prompt=p, **fields) for p in prompts]
    assert [c.text for c in response.choices] == [c.text for a in alone for c in a.choices]
    assert response.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone)
    with pytest.raises(openai.BadRequestError, match="one prompt per request to stream"):
        client.completions.create(prompt=prompts, stream=True, **fields)


def test_token_id_prompts_for_one_member_and_a_400_for_members_of_two_tokenizers(client, stack):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(stack.tiny_specs[0]["path"])
    texts = ["Once upon a time", "The capital of France is"]
    ids = [tokenizer(t)["input_ids"] for t in texts]
    fields = {"model": "tiny-llama", "max_tokens": 3, "temperature": 0}
    by_text = [client.completions.create(prompt=t, **fields).choices[0].text for t in texts]
    one = client.completions.create(prompt=ids[0], **fields)
    assert one.choices[0].text == by_text[0] and one.usage.prompt_tokens == len(ids[0])
    both = client.completions.create(prompt=ids, **fields)
    assert [c.text for c in both.choices] == by_text
    # a list of one id list (lm-eval's last batch of one) is that one prompt
    alone = client.completions.create(prompt=ids[:1], **fields)
    assert [c.text for c in alone.choices] == by_text[:1]
    with pytest.raises(openai.BadRequestError, match="one tokenizer"):
        client.completions.create(model="ensemble", prompt=ids[0], max_tokens=3)


def test_n_choices_and_a_member_model_alone(client):
    response = client.chat.completions.create(
        model="tiny-gpt2", messages=[{"role": "user", "content": "Hi"}], max_tokens=5, n=2, seed=3
    )
    assert [c.index for c in response.choices] == [0, 1]
    for choice in response.choices:
        assert choice.model_extra["metadata"]["selected_models"] == ["tiny-gpt2"]


def test_models_list_shows_the_ensemble_and_its_members(client):
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "ensemble"
    assert MEMBERS <= set(ids)
    assert client.models.retrieve("tiny-llama").id == "tiny-llama"


def test_errors_map_to_the_sdk_exceptions(client):
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="ensemble",
            messages=[{"role": "user", "content": "x"}],
            extra_body={"ensemble_config": {"model_selection_method": "zscroe"}},
        )
    assert bad.value.code == "invalid_config" and "zscore" in bad.value.message
    with pytest.raises(openai.BadRequestError) as invalid:
        client.chat.completions.create(
            model="ensemble", messages=[{"role": "user", "content": "x"}], top_logprobs=2
        )
    assert invalid.value.code == "invalid_value" and invalid.value.param == "top_logprobs"


def test_the_sdks_own_retries_of_a_504_attach_to_one_job(stack):
    """The SDK retries 5xx answers by itself with the same headers: with an Idempotency-Key
    the retries wait for the first job instead of starting new ones."""
    import uuid

    from sqlalchemy import create_engine, text

    key = f"sdk-{uuid.uuid4()}"
    retrying = openai.OpenAI(base_url=stack.base_url + "/v1", api_key="x", max_retries=5, timeout=120)
    retrying.models.list()
    # warm the worker so that the job ends within the retries (it loads the models once)
    retrying.chat.completions.create(
        model="ensemble", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    response = retrying.chat.completions.create(
        model="ensemble",
        messages=[{"role": "user", "content": "Tell me a story."}],
        max_tokens=24,
        extra_body={"timeout": 0.05},
        extra_headers={"Idempotency-Key": key},
    )
    assert response.choices[0].message.content
    engine = create_engine(stack.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT id, attempts FROM jobs WHERE idempotency_key = :k"), {"k": key}
            ).all()
    finally:
        engine.dispose()
    assert [(r.id, r.attempts) for r in rows] == [(response.id, 1)]
