"""kill -9 the webhook worker in the middle of a POST, start a new one: the event still arrives.

The receiver takes the first delivery's request and never answers, so the attempt stays
``sending`` inside the worker that delivers webhooks; that worker is killed. Nothing will
finish the attempt: the sweeper puts an attempt ``sending`` for ``webhook_stuck_after_s``
(6 s here) back to ``pending`` and sends it again; the new worker delivers it. The receiver
sees the event twice with the same ``webhook-id`` (at least once), the same delivery row
ends ``delivered``."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.faults.infra import report, wait_until
from tests.webhook_receiver import webhook_receiver

pytestmark = pytest.mark.usefixtures("fault_logs_on_failure")

SMALL = {"model": "ensemble", "prompt": "hello", "max_tokens": 4, "max_rounds": 1, "background": True}


def test_a_webhook_worker_killed_mid_delivery_the_event_still_arrives(fault_stack):
    with webhook_receiver(hang_first=1) as receiver, fault_stack.client() as client:
        resp = client.post("/v1/chat/completions", json={**SMALL, "webhook_url": receiver.url})
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
        receiver.wait_for(1, timeout=90)  # the POST is in flight, unanswered
        [stuck] = client.get(f"/v1/jobs/{job_id}/webhooks").json()["data"]
        assert stuck["status"] == "sending", stuck

        victim = fault_stack.io_worker
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait()
        killed_at = time.monotonic()
        assert client.get(f"/v1/jobs/{job_id}/webhooks").json()["data"][0]["status"] == "sending"
        fault_stack.restart_io_worker()

        receiver.wait_for(2, timeout=90)
        redelivered_s = time.monotonic() - killed_at
        wait_until(
            lambda: client.get(f"/v1/jobs/{job_id}/webhooks").json()["data"][0]["status"] == "delivered",
            30,
            "the delivery did not end delivered",
        )
        time.sleep(1.5)  # a third request, if there were one, would have arrived by now
        received = list(receiver.received)
        deliveries = client.get(f"/v1/jobs/{job_id}/webhooks").json()["data"]

    ids = [r.headers["webhook-id"] for r in received]
    assert len(received) == 2, f"the event arrives exactly once more after the kill: {ids}"
    assert ids[0] == ids[1] == stuck["event_id"], "the same event id both times (at least once)"
    assert [(d["id"], d["attempt"], d["status"]) for d in deliveries] == [
        (stuck["id"], stuck["attempt"], "delivered")
    ], "the same delivery row, sent again and delivered"
    assert deliveries[0]["response_status"] == 200
    report(
        "webhook worker killed with kill -9 in the middle of a POST",
        tried="the receiver held the first POST unanswered; the webhooks worker killed while the "
        "attempt was `sending`; a new worker started",
        redelivered_in=f"{redelivered_s:.1f} s after the kill (stuck after 6 s, sweep every 1 s)",
        requests_at_receiver=f"{len(received)} (same webhook-id)",
        lost=0,
    )
