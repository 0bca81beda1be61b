"""Every curl example of the user's guide, run as written (only the host changes) against the
live service with a real worker, checked against the response shapes the guide shows; then
the guide's Python ``EnsembleClient``; then guide example 1 on the real SmolLM2."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.usefixtures("show_logs_on_failure")

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "api_guide.md"  # the user's guide, shipped with the project
SEED_GUIDE = ROOT.parent / "shared" / "seed" / "api_guide.md"  # where the user keeps theirs
GUIDE_HOST = "http://localhost:8000"
MEMBERS = {"tiny-llama", "tiny-gpt2"}


def guide_text() -> str:
    return GUIDE.read_text()


def curl_examples() -> list[str]:
    """The curl commands of the guide's bash blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", guide_text(), re.S):
        joined = block.replace("\\\n", " ")
        commands += [m.group(0).strip() for m in re.finditer(r"curl .*?(?=\n(?:#|curl)|\Z)", joined, re.S)]
    return commands


def run_curl(command: str, base_url: str) -> tuple[int, dict]:
    command = command.replace(GUIDE_HOST, base_url) + " -s -w '\\n%{http_code}'"
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)
    body, _, status = out.stdout.rpartition("\n")
    return int(status), json.loads(body)


def check_completion_shape(body: dict) -> dict:
    """The guide's "Chat Completions 响应" shape."""
    assert body["object"] == "text_completion"
    assert isinstance(body["id"], str) and isinstance(body["created"], int)
    assert body["model"] == "ensemble"
    choice = body["choices"][0]
    assert choice["index"] == 0 and isinstance(choice["text"], str) and choice["text"]
    assert choice["finish_reason"] in ("stop", "length")
    metadata = choice["metadata"]
    assert set(metadata["selected_models"]) <= MEMBERS and metadata["selected_models"]
    assert "+" in metadata["method"]
    assert isinstance(metadata["ensemble_config"], dict)
    assert metadata["trace"]["rounds"], "the round trace comes with the answer"
    usage = body["usage"]
    assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    return metadata


def test_the_shipped_guide_is_the_users_guide():
    if not SEED_GUIDE.exists():
        pytest.skip("the user's copy is not next to this checkout")
    assert GUIDE.read_text() == SEED_GUIDE.read_text(), "docs/api_guide.md drifted from the user's guide"


def test_the_guide_has_the_examples_this_test_expects():
    paths = [re.search(r"localhost:8000(/[\w/]+)", c).group(1) for c in curl_examples()]
    assert paths == [
        "/v1/chat/completions",
        "/v1/chat/completions",
        "/v1/loop/completions",
        "/v1/ensemble/inference",
        "/v1/ensemble/presets/selection_only",
        "/v1/ensemble/presets/aggregation_only",
        "/v1/ensemble/batch",
        "/v1/ensemble/config",
        "/v1/ensemble/config",
        "/status",
        "/status",
    ]


def test_every_curl_example_of_the_guide(stack):
    examples = curl_examples()
    base = stack.base_url
    original = _current_config(stack)
    try:
        # 1. basic chat completion (default config: the stack's all + loop)
        status, body = run_curl(examples[0], base)
        assert status == 200, body
        assert set(check_completion_shape(body)["selected_models"]) == MEMBERS

        # 2. chat completion with an ensemble config
        status, body = run_curl(examples[1], base)
        assert status == 200, body
        metadata = check_completion_shape(body)
        assert metadata["method"] == "zscore+reward_based"
        assert metadata["ensemble_config"]["aggregation_level"] == "sentence"

        # 3. loop endpoint: round robin over every model, max_rounds from ensemble_config
        status, body = run_curl(examples[2], base)
        assert status == 200, body
        metadata = check_completion_shape(body)
        assert metadata["method"] == "all+round_robin"
        assert set(metadata["selected_models"]) == MEMBERS
        assert metadata["ensemble_config"]["max_rounds"] == 5
        assert len(metadata["trace"]["rounds"]) <= 5

        # 4. direct inference: the guide's "Ensemble Inference 响应" shape
        status, body = run_curl(examples[3], base)
        assert status == 200, body
        assert body["id"] and isinstance(body["created"], int)
        result = body["result"]
        assert result["output"] and set(result["selected_models"]) == MEMBERS
        assert result["method"] == "all+reward_based"
        assert result["config"]["aggregation_params"] == {"max_repeat": 3}
        assert isinstance(body["config"], dict)

        # 5. selection only: the selected best model answers alone
        status, body = run_curl(examples[4], base)
        assert status == 200, body
        metadata = check_completion_shape(body)
        assert metadata["method"] == "zscore+single"
        assert len(metadata["selected_models"]) == 1
        assert {r["winner"] for r in metadata["trace"]["rounds"]} == set(metadata["selected_models"])

        # 6. aggregation only: every model, no selection
        status, body = run_curl(examples[5], base)
        assert status == 200, body
        metadata = check_completion_shape(body)
        assert metadata["method"] == "all+round_robin"
        assert set(metadata["selected_models"]) == MEMBERS

        # 7. batch: accepted at once, then polled to completion
        status, body = run_curl(examples[6], base)
        assert status == 202, body
        assert body["status"] in ("validating", "in_progress") and body["request_counts"]["total"] == 2
        deadline = time.monotonic() + 120
        while (batch := httpx.get(f"{base}/v1/ensemble/batch/{body['id']}").json())["status"] != "completed":
            assert time.monotonic() < deadline, batch
            time.sleep(0.2)
        items = httpx.get(f"{base}/v1/ensemble/batch/{body['id']}/results").json()["data"]
        assert [i["input"] for i in items] == ["What is 5+5?", "What is 10×10?"]
        assert [i["result"]["method"] for i in items] == ["all+reward_based", "zscore+random"]

        # 8, 9. runtime config updates append versions
        before = httpx.get(base + "/v1/ensemble/config").json()["version"]
        status, body = run_curl(examples[7], base)
        assert status == 200, body
        assert body["version"] == before + 1
        assert [m["path"] for m in body["model_specs"]] == ["new-model-1", "new-model-2"]
        assert body["model_specs"][1]["device"] == "cuda:1"
        status, body = run_curl(examples[8], base)
        assert status == 200, body
        assert body["version"] == before + 2
        assert body["default_ensemble_config"]["model_selection_method"] == "zscore"

        # 10, 11. health check
        for example in examples[9:]:
            status, body = run_curl(example, base)
            assert status == 200 and body["status"] == "ok"
            assert body["checks"]["database"]["ok"] and body["checks"]["broker"]["ok"]
    finally:
        _restore(stack, original)


def test_the_guides_python_client(stack):
    """The guide's ``EnsembleClient`` block, executed as written (host changed)."""
    block = re.search(r"```python\n(.*?)```", guide_text(), re.S).group(1)
    code = block.replace(GUIDE_HOST, stack.base_url)
    printed = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "api_guide.md", "exec"), namespace)  # noqa: S102 - the guide's own code
    lines = [line for line in printed.getvalue().splitlines() if line.strip()]
    assert len(lines) >= 2, "both examples printed an answer"
    client = namespace["client"]
    result = client.simple_ensemble("What is machine learning?")
    assert result["object"] == "text_completion"
    assert result["choices"][0]["metadata"]["method"] == "all+reward_based"
    assert result["choices"][0]["text"]


@pytest.mark.slow
def test_guide_example_one_on_the_real_smollm2(stack):
    """Example 1 answered by the bundled SmolLM2-135M-Instruct. Its ``max_tokens`` goes from
    100 to 16: on two shared CPU cores 100 tokens cost about 30 s, and the tiny models above
    already run the example exactly as written."""
    smollm2 = [{"path": "bundled:smollm2", "engine": "hf", "device": "cpu", "name": "smollm2"}]
    command = curl_examples()[0]
    assert '"max_tokens": 100' in command
    original = _current_config(stack)
    httpx.post(stack.base_url + "/v1/ensemble/config", json={"model_specs": smollm2})
    try:
        status, body = run_curl(command.replace('"max_tokens": 100', '"max_tokens": 16'), stack.base_url)
    finally:
        _restore(stack, original)
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["metadata"]["selected_models"] == ["smollm2"]
    assert len(choice["text"].split()) >= 3, "a real model writes words"
    assert 0 < body["usage"]["completion_tokens"] <= 16


def _current_config(stack) -> dict:
    return httpx.get(stack.base_url + "/v1/ensemble/config").json()


def _restore(stack, original: dict) -> None:
    """Back to the config version the test started from, for the other tests."""
    httpx.post(
        stack.base_url + "/v1/ensemble/config",
        json={
            "model_specs": original["model_specs"],
            "default_ensemble_config": original["default_ensemble_config"],
            "note": f"restored version {original['version']} after the guide examples",
        },
    )
