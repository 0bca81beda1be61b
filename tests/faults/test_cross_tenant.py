"""Cross-tenant access: 0 of N attempts to read or touch another tenant's jobs, batches and
webhook logs succeed (each is a 404, as for an id that does not exist), and lists never show
them. Without a key, or with a wrong one, every endpoint but ``/`` and ``/status`` is a 401;
changing the config needs an admin key (403)."""

from __future__ import annotations

import json

import pytest

from tests.faults.infra import report

pytestmark = pytest.mark.usefixtures("fault_logs_on_failure")

SMALL = {"model": "ensemble", "max_tokens": 4, "max_rounds": 1}


def test_no_tenant_reaches_another_tenants_jobs_batches_or_webhook_logs(fault_stack):
    with fault_stack.client("alice") as alice, fault_stack.client("bob") as bob:
        sync_job = alice.post(
            "/v1/chat/completions",
            json={**SMALL, "prompt": "mine"},
            headers={"Idempotency-Key": "shared-key"},
        ).json()["id"]
        background_job = alice.post(
            "/v1/chat/completions", json={**SMALL, "prompt": "later", "background": True}
        ).json()["id"]
        batch = alice.post("/v1/ensemble/batch", json={"examples": [{"input": "x"}], "max_tokens": 4}).json()
        item = alice.get(f"/v1/ensemble/batch/{batch['id']}/results").json()["data"][0]["id"]
        own = bob.post("/v1/chat/completions", json={**SMALL, "prompt": "bob's"}).json()["id"]
        line = {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {**SMALL, "prompt": "x"},
        }
        upload = alice.post(
            "/v1/files",
            files={"file": ("in.jsonl", json.dumps(line).encode() + b"\n")},
            data={"purpose": "batch"},
        )
        assert upload.status_code == 200, upload.text
        file_id = upload.json()["id"]
        openai_batch = alice.post(
            "/v1/batches",
            json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        ).json()["id"]

        attempts: list[tuple[str, int, bool]] = []  # (what, status, got through)

        def attempt(method: str, path: str, **kwargs) -> None:  # type: ignore[no-untyped-def]
            resp = bob.request(method, path, **kwargs)
            attempts.append((f"{method} {path}", resp.status_code, resp.status_code != 404))

        for job_id in (sync_job, background_job, item):
            attempt("GET", f"/v1/jobs/{job_id}")
            attempt("POST", f"/v1/jobs/{job_id}/cancel")
            attempt("GET", f"/v1/jobs/{job_id}/webhooks")
            attempt("POST", f"/v1/jobs/{job_id}/webhooks/resend")
        batch_path = f"/v1/ensemble/batch/{batch['id']}"
        attempt("GET", batch_path)
        attempt("GET", batch_path + "/results")
        attempt("GET", batch_path + "/results", headers={"Accept": "application/x-ndjson"})
        attempt("POST", batch_path + "/cancel")
        attempt("GET", batch_path + "/webhooks")
        attempt("POST", batch_path + "/webhooks/resend")

        attempt("GET", f"/v1/files/{file_id}")
        attempt("GET", f"/v1/files/{file_id}/content")
        attempt("GET", f"/v1/batches/{openai_batch}")
        attempt("POST", f"/v1/batches/{openai_batch}/cancel")
        attempt(
            "POST",
            "/v1/batches",
            json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        )

        theirs = {sync_job, background_job, item, batch["id"], file_id, openai_batch}
        listed = {j["id"] for j in bob.get("/v1/jobs", params={"limit": 1000}).json()["data"]}
        listed |= {f["id"] for f in bob.get("/v1/files").json()["data"]}
        listed |= {b["id"] for b in bob.get("/v1/batches").json()["data"]}
        listed |= {j["id"] for j in bob.get("/v1/jobs", params={"batch_id": batch["id"]}).json()["data"]}
        listed |= {b["id"] for b in bob.get("/v1/ensemble/batch", params={"limit": 100}).json()["data"]}
        attempts.append(("lists of jobs and batches", 200, bool(listed & theirs)))
        # the same Idempotency-Key and body from another tenant is another job
        same = bob.post(
            "/v1/chat/completions",
            json={**SMALL, "prompt": "mine"},
            headers={"Idempotency-Key": "shared-key"},
        ).json()["id"]
        attempts.append(("Idempotency-Key of another tenant", 200, same == sync_job))

        assert own in listed, "a tenant sees its own jobs"
        assert alice.get(f"/v1/jobs/{sync_job}").json()["status"] == "succeeded"
        assert alice.get(f"/v1/ensemble/batch/{batch['id']}").status_code == 200

        unauthenticated = _without_keys(fault_stack.base_url, alice, bob)

    got_through = [a for a in attempts if a[2]]
    assert not got_through, got_through
    report(
        "cross-tenant access",
        tried=f"{len(attempts)} reads and writes by tenant bob on tenant alice's 3 jobs, 1 batch, "
        "their webhook logs, 1 file and 1 OpenAI batch (by id, in lists, by Idempotency-Key)",
        succeeded=f"{len(got_through)} of {len(attempts)}",
        without_or_with_a_wrong_key=unauthenticated,
        lost=0,
    )


def _without_keys(base_url: str, alice, bob) -> str:  # type: ignore[no-untyped-def]
    import httpx

    protected = [
        "/v1/models",
        "/v1/jobs",
        "/v1/ensemble/config",
        "/v1/ensemble/methods",
        "/v1/ensemble/batch",
        "/v1/files",
        "/v1/batches",
    ]
    statuses = []
    for path in protected:
        statuses.append(httpx.get(base_url + path).status_code)
        statuses.append(httpx.get(base_url + path, headers={"Authorization": "Bearer ehk_wrong"}).status_code)
    assert set(statuses) == {401}, statuses
    assert httpx.get(base_url + "/").status_code == 200
    assert httpx.get(base_url + "/status").status_code in (200, 503)
    forbidden = bob.post("/v1/ensemble/config", json={"note": "not allowed"})
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "admin_key_required"
    return f"{statuses.count(401)} of {len(statuses)} answered 401; a config change with a tenant key: 403"
