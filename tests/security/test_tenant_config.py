"""A tenant's request chooses methods, numbers and names; it never loads weights, runs code
or makes the service connect anywhere. Each attack answers 403 naming the field, and a
local listener (no connection) or a marker file (no code ran) proves nothing happened."""

from __future__ import annotations

import time

import pytest

from tests.security.listener import listener

CHAT = {"model": "ensemble", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}


def _refused(resp, param: str) -> None:  # type: ignore[no-untyped-def]
    assert resp.status_code == 403, resp.text
    error = resp.json()["error"]
    assert error["code"] == "forbidden_config_field" and error["param"] == param, error
    assert param.rsplit(".", 1)[-1] in error["message"] or "by name" in error["message"]


def _no_tenant_jobs(hub) -> None:  # type: ignore[no-untyped-def]
    assert hub.client.get("/v1/jobs", headers=hub.tenant).json()["data"] == [], "nothing was stored"


def test_reward_model_with_trust_remote_code_is_refused_and_no_code_runs(hub, evil_model):
    folder, marker = evil_model
    scorer = {"type": "reward_model", "path": str(folder), "engine_options": {"trust_remote_code": True}}
    config = {"ensemble_method": "simple", "aggregation_params": {"scorers": [scorer]}}
    resp = hub.client.post(
        "/v1/chat/completions", json={**CHAT, "ensemble_config": config}, headers=hub.tenant
    )
    _refused(resp, "ensemble_config.aggregation_params.scorers.0.path")
    time.sleep(1.0)
    assert not marker.exists(), "the tenant's model code ran"
    _no_tenant_jobs(hub)


def test_prm_engine_options_are_refused(hub, evil_model):
    folder, marker = evil_model
    scorer = {"type": "prm", "engine_options": {"trust_remote_code": True}}
    config = {
        "aggregation_level": "response",
        "aggregation_method": "best_of_n",
        "aggregation_params": {"scorers": [scorer]},
    }
    resp = hub.client.post(
        "/v1/chat/completions", json={**CHAT, "ensemble_config": config}, headers=hub.tenant
    )
    _refused(resp, "ensemble_config.aggregation_params.scorers.0.engine_options")
    assert not marker.exists()


def test_scorer_types_not_whitelisted_are_usable_by_name_only(hub):
    # prm without a path: no forbidden key, but the type itself may not be configured inline
    config = {"ensemble_method": "simple", "aggregation_params": {"scorers": [{"type": "prm", "weight": 1}]}}
    resp = hub.client.post(
        "/v1/chat/completions", json={**CHAT, "ensemble_config": config}, headers=hub.tenant
    )
    _refused(resp, "ensemble_config.aggregation_params.scorers.0.type")


@pytest.mark.parametrize(
    ("path", "body_of"),
    [
        ("/v1/chat/completions", lambda cfg: {**CHAT, "ensemble_config": cfg}),
        ("/v1/ensemble/inference", lambda cfg: {"input": "Hi", "max_tokens": 3, "ensemble_config": cfg}),
    ],
)
def test_remote_scorer_url_is_refused_and_never_fetched(hub, path, body_of):
    with listener() as trap:
        scorer = {"type": "remote", "url": trap.url, "headers": {"X-Token": "t"}}
        config = {"ensemble_method": "simple", "aggregation_params": {"scorers": [scorer]}}
        _refused(
            hub.client.post(path, json=body_of(config), headers=hub.tenant),
            "ensemble_config.aggregation_params.scorers.0.url",
        )
        time.sleep(1.0)
        assert trap.connections == 0, "the service connected to the tenant's URL"


def test_a_batch_item_with_a_scorer_url_is_refused_naming_the_item(hub):
    with listener() as trap:
        scorer = {"type": "remote", "url": trap.url}
        body = {
            "examples": [
                {"input": "ok"},
                {
                    "input": "bad",
                    "ensemble_config": {
                        "ensemble_method": "simple",
                        "aggregation_params": {"scorers": [scorer]},
                    },
                },
            ],
            "max_tokens": 3,
        }
        resp = hub.client.post("/v1/ensemble/batch", json=body, headers=hub.tenant)
        _refused(resp, "examples.1.ensemble_config.aggregation_params.scorers.0.url")
        time.sleep(1.0)
        assert trap.connections == 0


def test_selection_scorers_are_checked_too(hub):
    with listener() as trap:
        config = {
            "model_selection_method": "llm_blender",
            "model_selection_params": {"scorers": [{"type": "remote", "url": trap.url}]},
        }
        resp = hub.client.post(
            "/v1/chat/completions", json={**CHAT, "ensemble_config": config}, headers=hub.tenant
        )
        _refused(resp, "ensemble_config.model_selection_params.scorers.0.url")
        assert trap.connections == 0


def test_fuser_model_spec_with_a_base_url_is_refused_and_never_connected(hub):
    with listener() as trap:
        fuser = {"path": "m", "engine": "openai", "engine_options": {"base_url": trap.url}}
        config = {
            "aggregation_level": "response",
            "aggregation_method": "llm_blender",
            "aggregation_params": {"fuser": fuser},
        }
        resp = hub.client.post(
            "/v1/chat/completions", json={**CHAT, "ensemble_config": config}, headers=hub.tenant
        )
        _refused(resp, "ensemble_config.aggregation_params.fuser.path")
        time.sleep(1.0)
        assert trap.connections == 0


def test_fuser_given_as_a_model_path_is_refused(hub, evil_model):
    folder, marker = evil_model
    config = {
        "aggregation_level": "response",
        "aggregation_method": "llm_blender",
        "aggregation_params": {"fuser": str(folder)},
    }
    resp = hub.client.post(
        "/v1/chat/completions", json={**CHAT, "ensemble_config": config}, headers=hub.tenant
    )
    _refused(resp, "ensemble_config.aggregation_params.fuser")
    assert "tiny-llama" in resp.json()["error"]["message"], "the valid names are listed"
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["likelihood", "pmi"])
def test_scorer_models_must_be_members(hub, evil_model, kind):
    folder, _ = evil_model
    scorer = {"type": kind, "models": ["tiny-llama", str(folder)]}
    config = {"ensemble_method": "simple", "aggregation_params": {"scorers": [scorer]}}
    resp = hub.client.post(
        "/v1/chat/completions", json={**CHAT, "ensemble_config": config}, headers=hub.tenant
    )
    _refused(resp, "ensemble_config.aggregation_params.scorers.0.models.1")


def test_a_tenant_uses_the_admins_named_scorer_and_its_job_shows_only_the_name(hub):
    before = hub.judge.connections
    config = {
        "model_selection_method": "all",
        "ensemble_method": "simple",
        "aggregation_params": {"scorers": [{"ref": "judge", "weight": 2}]},
    }
    resp = hub.client.post(
        "/v1/chat/completions", json={**CHAT, "max_rounds": 1, "ensemble_config": config}, headers=hub.tenant
    )
    assert resp.status_code == 200, resp.text
    assert hub.judge.connections > before, "the named scorer was called by the worker"
    job = hub.client.get(f"/v1/jobs/{resp.json()['id']}", headers=hub.tenant).json()
    stored = job["request"]["ensemble_config"]["aggregation_params"]["scorers"]
    assert stored == [{"ref": "judge", "weight": 2}]
    assert hub.judge.url not in resp.text, resp.text
    assert hub.judge.url not in str(job), job


def test_an_unknown_scorer_name_is_a_400_listing_the_names(hub):
    config = {"ensemble_method": "simple", "aggregation_params": {"scorers": ["nope"]}}
    resp = hub.client.post(
        "/v1/chat/completions", json={**CHAT, "ensemble_config": config}, headers=hub.tenant
    )
    assert resp.status_code == 400, resp.text
    assert "judge" in resp.json()["error"]["message"]
