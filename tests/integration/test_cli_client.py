"""The `ensemblehub` client commands against the live stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.services import ROOT

pytestmark = pytest.mark.usefixtures("show_logs_on_failure")


def cli(stack, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ENSEMBLEHUB_URL": stack.base_url}
    return subprocess.run(
        [sys.executable, "-m", "ensemblehub.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_batch_submit_wait_shows_progress_and_writes_results_in_order(stack, tmp_path):
    items = tmp_path / "items.jsonl"
    lines = [{"input": f"What is {i}+{i}?", "max_tokens": 4} for i in range(4)]
    lines[1]["instruction"] = "You are terse."
    items.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    output = tmp_path / "results.jsonl"
    out = cli(stack, "batch", "submit", str(items), "--wait", "--output", str(output), "--poll", "0.3")
    assert out.returncode == 0, out.stdout + out.stderr
    progress = [line for line in out.stdout.splitlines() if line.startswith("[")]
    assert progress, out.stdout
    assert "4/4" in progress[-1] and "completed=4" in progress[-1] and "items/s" in progress[-1]
    assert "ETA" in progress[0]
    results = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(results) == 4
    assert [r.get("index", i) for i, r in enumerate(results)] == [0, 1, 2, 3]


def test_batch_submit_rejects_a_file_without_inputs(stack, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "no input here"}\n')
    out = cli(stack, "batch", "submit", str(bad))
    assert out.returncode == 1
    assert "needs an 'input'" in out.stderr


def test_config_set_show_history_and_jobs_get(stack):
    before = json.loads(cli(stack, "config", "show").stdout)["version"]
    out = cli(stack, "config", "set", "--set", "max_repeat=2", "--note", "from the cli")
    assert out.returncode == 0, out.stderr
    assert f"stored config version {before + 1}" in out.stdout
    shown = json.loads(cli(stack, "config", "show").stdout)
    assert shown["default_ensemble_config"]["max_repeat"] == 2
    history = cli(stack, "config", "history").stdout.splitlines()
    assert history[0].startswith(f"v{before + 1}") and "from the cli" in history[0]

    bad = cli(stack, "config", "set", "--set", "ensemble_method=nope")
    assert bad.returncode == 1 and "invalid_config" in bad.stderr

    missing = cli(stack, "jobs", "get", "job-nope")
    assert missing.returncode == 1 and "404" in missing.stderr


def test_calibrate_computes_reference_stats_and_zscore_uses_them(stack, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "What is 2+2?\nName a colour.\n" + json.dumps({"question": "Why is the sky blue?"}) + "\n"
    )
    out = cli(stack, "calibrate", str(prompts), "--apply")
    assert out.returncode == 0, out.stdout + out.stderr
    stats = json.loads(out.stdout)
    assert {spec["path"] for spec in stack.tiny_specs} == set(stats)
    assert "stored config version" in out.stderr
    import httpx

    resp = httpx.post(
        stack.base_url + "/v1/ensemble/inference",
        json={
            "input": "What is 2+2?",
            "max_tokens": 4,
            "ensemble_config": {"aggregation_method": "round_robin"},
        },
        timeout=120,
    )
    assert resp.status_code == 200, resp.text
    selection = resp.json()["result"]["trace"]["selection"]
    assert selection["method"] == "zscore"
    assert selection["details"]["reference"] == "calibrated"
    # put the plain selector back for the other tests
    httpx.post(
        stack.base_url + "/v1/ensemble/config",
        json={"default_ensemble_config": {"model_selection_method": "all", "model_selection_params": {}}},
    )
