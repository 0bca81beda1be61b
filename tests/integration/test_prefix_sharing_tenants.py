"""Prompt key/values shared across jobs (``shared_prefixes``) stay within a tenant: on the live
stack (API with two tenants' keys, a worker with a tiny HF model), a job of one tenant prefills
the system prompt that another tenant's job left in the worker again, and a second job of the
same tenant does not (``usage.per_model.<model>.prefilled``)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from persistence import api_key_repository
from persistence.db import Database
from tests import services
from tests.tiny_models import build_tiny_model

SYSTEM = "You are a careful assistant who counts things for people and answers in one short line."


def _keys(database_url: str, *tenants: str) -> list[str]:
    db = Database(database_url)
    try:
        with db.transaction() as session:
            return [api_key_repository.create_api_key(session, tenant=t)[1] for t in tenants]
    finally:
        db.dispose()


def _ask(base: str, key: str, question: str) -> tuple[int, int]:
    """(prompt tokens, tokens prefilled) of one chat request."""
    resp = httpx.post(
        base + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "model": "ensemble",
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
            "max_tokens": 4,
            "temperature": 0,
        },
        timeout=120,
    )
    assert resp.status_code == 200, resp.text
    usage = resp.json()["usage"]
    return usage["prompt_tokens"], usage["per_model"]["tiny"]["prefilled"]


def test_a_tenant_reuses_its_own_prompts_prefix_and_never_another_tenants(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "tiny", arch="llama", vocab_seed=3)
    specs = [{"path": str(model), "name": "tiny", "temperature": 0}]
    with services.migrated_database() as db_url, services.private_redis_db() as broker:
        alice, bob = _keys(db_url, "alice", "bob")
        env = services.service_env(db_url, broker)
        worker = services.start_worker(env, tmp_path)
        api, base = services.start_api(
            env,
            tmp_path,
            [
                "--model_specs",
                json.dumps(specs),
                "--model_selection_method",
                "all",
                "--ensemble_method",
                "loop",
            ],
        )
        try:
            services.wait_for_worker(base, worker)
            prompt, prefilled = _ask(base, alice, "How many legs has a cat?")
            assert prefilled == prompt  # nothing kept yet
            prompt, prefilled = _ask(base, bob, "How many legs has a bird?")
            assert prefilled == prompt  # alice's system prompt is not bob's to reuse
            prompt, prefilled = _ask(base, alice, "How many legs has a dog?")
            assert prefilled < prompt - 8  # alice's own: only the question is prefilled
        finally:
            api.stop()
            worker.stop()
