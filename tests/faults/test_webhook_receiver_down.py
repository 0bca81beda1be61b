"""The webhook receiver is down for a while, then back: every event is delivered, every
signature verifies, and each event id arrives at least once; a duplicate (here a manual
re-send) carries the same ``webhook-id``, so the receiver can tell it apart.

Attempts that find the receiver down (connection refused) are retried on the schedule
(0.5, 1, 2, 3, 5, 8 s here, +/-20 % jitter), each attempt its own row."""

from __future__ import annotations

import json
import time

import pytest
from standardwebhooks import Webhook

from tests import services
from tests.conftest import WEBHOOK_SECRET
from tests.faults.infra import report, wait_until
from tests.webhook_receiver import webhook_receiver

pytestmark = pytest.mark.usefixtures("fault_logs_on_failure")

JOBS = 8
DOWN_S = 4.0


def test_every_event_is_delivered_after_the_receiver_comes_back(fault_stack):
    port = services.free_port()
    url = f"http://127.0.0.1:{port}/hooks/ensemble"
    small = {"model": "ensemble", "max_tokens": 4, "max_rounds": 1, "background": True, "webhook_url": url}
    with fault_stack.client() as client:
        job_ids = []
        for i in range(JOBS):
            resp = client.post("/v1/chat/completions", json={**small, "prompt": f"event {i}"})
            assert resp.status_code == 202, resp.text
            job_ids.append(resp.json()["id"])
        batch = client.post(
            "/v1/ensemble/batch",
            json={"examples": [{"input": "a"}, {"input": "b"}], "max_tokens": 4, "webhook_url": url},
        ).json()
        wait_until(
            lambda: (
                all(client.get(f"/v1/jobs/{j}").json()["status"] == "succeeded" for j in job_ids)
                and client.get(f"/v1/ensemble/batch/{batch['id']}").json()["status"] == "completed"
            ),
            60,
            "jobs did not finish",
        )
        expected = JOBS + 1  # one event per job, one for the batch
        # every event has met the closed port at least once; then it stays closed a while
        wait_until(
            lambda: (
                len(
                    {
                        a["event_id"]
                        for a in _attempts(client, job_ids, batch["id"])
                        if a["status"] == "failed"
                    }
                )
                == expected
            ),
            30,
            "first attempts did not fail",
        )
        time.sleep(DOWN_S)
        refused = [a for a in _attempts(client, job_ids, batch["id"]) if a["status"] == "failed"]

        with webhook_receiver(port=port) as receiver:
            receiver.wait_for(expected, timeout=60)
            wait_until(
                lambda: len({r.headers["webhook-id"] for r in receiver.received}) >= expected, 30, "ids"
            )
            # a duplicate on purpose: the latest event of the first job, re-sent by hand
            assert client.post(f"/v1/jobs/{job_ids[0]}/webhooks/resend").status_code == 202
            receiver.wait_for(expected + 1, timeout=30)
            time.sleep(0.5)
            received = list(receiver.received)
        attempts = _attempts(client, job_ids, batch["id"])

    verifier = Webhook(WEBHOOK_SECRET)
    bad_signatures = 0
    ids: list[str] = []
    for hit in received:
        try:
            payload = verifier.verify(hit.body, hit.headers)
        except Exception:  # noqa: BLE001 - counted and asserted below
            bad_signatures += 1
            continue
        assert payload["id"] == hit.headers["webhook-id"], "the event id is in the header and the body"
        ids.append(hit.headers["webhook-id"])
    unique = set(ids)
    expected_ids = {a["event_id"] for a in attempts}
    duplicates = len(ids) - len(unique)
    assert bad_signatures == 0
    assert unique == expected_ids and len(unique) == expected, "every event delivered at least once"
    assert duplicates >= 1, "the manual re-send arrives again with the same id"
    types = sorted({json.loads(h.body)["type"] for h in received})
    report(
        "webhook receiver down, then back",
        tried=f"{JOBS} jobs + 1 batch with a webhook_url; every event refused at least once, receiver down {DOWN_S:.0f} s more, then up; "
        "1 event re-sent by hand",
        attempts_refused_while_down=len(refused),
        attempts_in_all=len(attempts),
        events_delivered=f"{len(unique)} of {expected} ({', '.join(types)})",
        duplicates_detected_by_id=duplicates,
        bad_signatures=bad_signatures,
        lost=expected - len(unique),
    )


def _attempts(client, job_ids: list[str], batch_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    rows = [d for j in job_ids for d in client.get(f"/v1/jobs/{j}/webhooks").json()["data"]]
    return rows + client.get(f"/v1/ensemble/batch/{batch_id}/webhooks").json()["data"]
