"""Webhooks end to end: a real receiver on 127.0.0.1, signatures checked with the
``standardwebhooks`` library and OpenAI's verifier, retries on the ``webhooks`` queue,
every attempt stored, manual re-send, and the SSRF guard."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from standardwebhooks import Webhook

from tests.webhook_receiver import webhook_receiver

pytestmark = pytest.mark.usefixtures("show_logs_on_failure")

PROMPT = {"model": "ensemble", "prompt": "What is 2+2?", "max_tokens": 4}


def test_a_finished_job_posts_a_signed_event(stack):
    with webhook_receiver() as receiver, stack.client() as client:
        resp = client.post("/v1/chat/completions", json={**PROMPT, "webhook_url": receiver.url})
        assert resp.status_code == 200, resp.text
        job_id = resp.json()["id"]
        [hit] = receiver.wait_for(1)
    event = Webhook(stack.webhook_secret).verify(hit.body, hit.headers)
    assert event["type"] == "job.succeeded"
    assert event["id"] == hit.headers["webhook-id"]
    assert event["data"]["id"] == job_id and event["data"]["status"] == "succeeded"
    assert event["data"]["result"]["text"] == resp.json()["choices"][0]["text"]
    # OpenAI's own verifier accepts it too
    openai.OpenAI(api_key="unused").webhooks.verify_signature(
        hit.body, hit.headers, secret=stack.webhook_secret
    )
    with pytest.raises(Exception):  # noqa: B017 - any verification error will do
        Webhook(stack.webhook_secret).verify(hit.body.replace(b"succeeded", b"failed"), hit.headers)


def test_retries_after_two_500s_with_the_same_event_id_and_every_attempt_stored(stack):
    with webhook_receiver(script=[500, 500]) as receiver, stack.client() as client:
        job_id = client.post("/v1/chat/completions", json={**PROMPT, "webhook_url": receiver.url}).json()[
            "id"
        ]
        hits = receiver.wait_for(3)
        assert [h.answered for h in hits] == [500, 500, 200]
        assert len({h.headers["webhook-id"] for h in hits}) == 1, "one event, three attempts"
        for hit in hits:
            Webhook(stack.webhook_secret).verify(hit.body, hit.headers)

        attempts = _wait_attempts(client, job_id, 3)
        assert [(a["attempt"], a["trigger"], a["status"], a["response_status"]) for a in attempts] == [
            (1, "event", "failed", 500),
            (2, "retry", "failed", 500),
            (3, "retry", "delivered", 200),
        ]
        # the retries waited (0.3 s, then 0.6 s, each with jitter)
        assert attempts[1]["scheduled_at"] >= attempts[0]["created_at"]

        resent = client.post(f"/v1/jobs/{job_id}/webhooks/resend")
        assert resent.status_code == 202, resent.text
        assert resent.json()["trigger"] == "manual" and resent.json()["attempt"] == 4
        fourth = receiver.wait_for(4)[3]
        assert fourth.headers["webhook-id"] == hits[0].headers["webhook-id"]
        assert _wait_attempts(client, job_id, 4)[3]["status"] == "delivered"


def test_the_schedule_ends_and_the_attempts_say_why(stack):
    with webhook_receiver(script=[503] * 10) as receiver, stack.client() as client:
        job_id = client.post("/v1/chat/completions", json={**PROMPT, "webhook_url": receiver.url}).json()[
            "id"
        ]
        receiver.wait_for(4)
        attempts = _wait_attempts(client, job_id, 4)
    assert [a["status"] for a in attempts] == ["failed"] * 4, "first attempt + the three retries"
    assert all(a["error"] == "receiver answered HTTP 503" for a in attempts)


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.7/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/hook",
        "http://192.168.1.20/hook",
        "ftp://example.com/hook",
    ],
)
def test_a_private_callback_is_refused_with_a_clear_422(stack, url):
    resp = httpx.post(stack.base_url + "/v1/chat/completions", json={**PROMPT, "webhook_url": url})
    assert resp.status_code == 422
    error = resp.json()["error"]
    assert error["code"] == "webhook_url_forbidden" and error["param"] == "webhook_url"
    if url.startswith("http"):
        assert "ENSEMBLEHUB_WEBHOOK_ALLOWLIST" in error["message"]


def test_a_batch_posts_one_event_when_it_completes(stack):
    body = {
        "examples": [{"instruction": "Be brief.", "input": f"Say {i}"} for i in range(3)],
        "max_tokens": 3,
    }
    with webhook_receiver() as receiver, stack.client() as client:
        batch = client.post("/v1/ensemble/batch", json={**body, "webhook_url": receiver.url}).json()
        [hit] = receiver.wait_for(1)
        event = Webhook(stack.webhook_secret).verify(hit.body, hit.headers)
        assert event["type"] == "batch.completed"
        assert event["data"]["id"] == batch["id"]
        assert event["data"]["request_counts"]["completed"] == 3
        listed = client.get(f"/v1/ensemble/batch/{batch['id']}/webhooks").json()["data"]
    assert [d["status"] for d in listed] == ["delivered"]
    assert json.loads(hit.body)["id"] == listed[0]["event_id"]


def _wait_attempts(client: httpx.Client, job_id: str, count: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    attempts: list[dict] = []
    while time.monotonic() < deadline:
        attempts = client.get(f"/v1/jobs/{job_id}/webhooks").json()["data"]
        if len(attempts) >= count and all(
            a["status"] not in ("pending", "sending") for a in attempts[:count]
        ):
            return attempts
        time.sleep(0.1)
    raise AssertionError(f"attempts did not settle: {attempts}")
