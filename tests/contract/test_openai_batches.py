"""OpenAI's Files and Batches API through the official ``openai`` package, unchanged, against
the live stack: upload, create, poll, download results by ``custom_id``, cancel, errors."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests import services

pytestmark = pytest.mark.usefixtures("show_logs_on_failure")


@pytest.fixture(scope="module")
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url + "/v1", api_key="not-needed", max_retries=0, timeout=120)


def jsonl(*lines: dict) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def chat_line(custom_id: str, content: str, model: str = "ensemble", **extra) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 6, **extra}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def wait_until_ended(client: openai.OpenAI, batch_id: str, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch.request_counts}"
        time.sleep(0.3)


def test_batch_flow_with_the_official_sdk(client, stack):
    content = jsonl(
        chat_line("q-1", "What is 2+2?"),
        chat_line("q-2", "Name a colour.", model="tiny-gpt2", seed=3),
        chat_line("q-3", "Count to three.", ensemble_config={"aggregation_params": {"segment_tokens": 2}}),
    )
    uploaded = client.files.create(file=("requests.jsonl", content), purpose="batch")
    assert uploaded.object == "file" and uploaded.purpose == "batch" and uploaded.bytes == len(content)
    assert client.files.retrieve(uploaded.id).filename == "requests.jsonl"
    assert client.files.content(uploaded.id).content == content

    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"run": "contract"},
    )
    assert batch.object == "batch" and batch.input_file_id == uploaded.id
    assert batch.status in ("validating", "in_progress", "completed")
    assert batch.request_counts.total == 3 and batch.metadata == {"run": "contract"}

    done = wait_until_ended(client, batch.id)
    assert done.status == "completed", done
    errors = client.files.content(done.error_file_id).text if done.error_file_id else ""
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 0), errors
    assert done.completed_at and done.in_progress_at and done.error_file_id is None
    assert batch.id in [b.id for b in client.batches.list(limit=100).data]

    output = client.files.content(done.output_file_id).text
    results = {r["custom_id"]: r for r in map(json.loads, output.splitlines())}
    assert list(results) == ["q-1", "q-2", "q-3"], "one line per request, in input order"
    for custom_id, line in results.items():
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and isinstance(
            body["choices"][0]["message"]["content"], str
        )
        assert body["usage"]["completion_tokens"] > 0, custom_id
    assert results["q-2"]["response"]["body"]["model"] == "tiny-gpt2"
    assert results["q-2"]["response"]["body"]["choices"][0]["metadata"]["selected_models"] == ["tiny-gpt2"]
    assert client.files.retrieve(done.output_file_id).bytes == len(output.encode())

    # the same batch and jobs as the guide's batch endpoint; each line's request was prepared
    # the way /v1/chat/completions prepares it
    items = httpx.get(f"{stack.base_url}/v1/ensemble/batch/{batch.id}/results").json()["data"]
    assert [i["input"] for i in items] == ["What is 2+2?", "Name a colour.", "Count to three."]
    job = httpx.get(f"{stack.base_url}/v1/jobs/{items[2]['id']}").json()
    assert job["batch_id"] == batch.id and job["request"]["custom_id"] == "q-3"
    assert job["request"]["ensemble_config"]["aggregation_params"]["segment_tokens"] == 2
    assert job["request"]["generation"]["max_tokens"] == 6


def test_cancelled_batch_lists_every_request_in_its_error_file(client, stack):
    uploaded = client.files.create(
        file=("cancel.jsonl", jsonl(chat_line("a", "One"), chat_line("b", "Two"))), purpose="batch"
    )
    with services.queue_paused(stack.broker_url):  # the items wait in the queue until cancelled
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        cancelled = client.batches.cancel(batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at and cancelled.cancelling_at
    assert (cancelled.request_counts.completed, cancelled.request_counts.failed) == (0, 2)
    assert cancelled.output_file_id is None and cancelled.error_file_id
    errors = [json.loads(line) for line in client.files.content(cancelled.error_file_id).text.splitlines()]
    assert [(e["custom_id"], e["error"]["code"], e["response"]) for e in errors] == [
        ("a", "batch_cancelled", None),
        ("b", "batch_cancelled", None),
    ]


def test_bad_input_files_and_batches_are_refused_with_the_line(client):
    bad = (
        json.dumps(chat_line("ok", "Hi"))
        + "\n{not json\n"
        + json.dumps(
            {"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {"max_tokens": -1}}
        )
        + "\n"
        + json.dumps(chat_line("ok", "again"))
        + "\n"
    ).encode()
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("bad.jsonl", bad), purpose="batch")
    message = err.value.body["message"]
    assert "line 2: not valid JSON" in message
    assert "line 3: body.max_tokens" in message
    assert "line 4: custom_id 'ok' repeats line 1" in message
    assert err.value.body["code"] == "invalid_batch_file"

    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("x.jsonl", jsonl(chat_line("a", "Hi"))), purpose="fine-tune")

    # a line the chat endpoint would refuse is refused at batch creation, with its line number
    uploaded = client.files.create(
        file=("m.jsonl", jsonl(chat_line("a", "Hi"), chat_line("b", "Hi", model="no-such-model"))),
        purpose="batch",
    )
    with pytest.raises(openai.BadRequestError, match=r"line 2 \(custom_id 'b'\).*no-such-model"):
        client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch-does-not-exist")
