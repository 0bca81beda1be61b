"""A schemathesis run against the OpenAPI document of every endpoint: no 5xx and no answer
that breaks the document (status code, content type, response schema).

It runs as a tenant (not an admin: a generated config change would be stored and change what
later tests run; the admin path answers 403 here, documented). The API it talks to has small
caps (``max_tokens`` 16, ``max_rounds`` 3) so that every generated job that passes validation
really runs on the tiny models and answers within the run's time budget."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests import services
from tests.faults.infra import FaultStack, report

MAX_EXAMPLES = 6
CHECKS = "no_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest.fixture
def capped_api(fault_stack: FaultStack) -> Iterator[str]:
    env = {
        **fault_stack.env,
        "ENSEMBLEHUB_MAX_TOKENS_LIMIT": "16",
        "ENSEMBLEHUB_MAX_ROUNDS_LIMIT": "3",
        "ENSEMBLEHUB_MAX_SYNC_TIMEOUT_S": "60",
    }
    api, base = services.start_api(env, fault_stack.log_dir, [])
    try:
        yield base
    finally:
        api.stop()


def test_schemathesis_finds_no_server_error_and_no_schema_violation(fault_stack, capped_api, tmp_path):
    report_path = tmp_path / "schemathesis.json"
    argv = [sys.executable, "-m", "schemathesis.cli", "run", capped_api + "/openapi.json", "--checks", CHECKS]
    argv += ["--max-examples", str(MAX_EXAMPLES), "--phases", "examples,coverage,fuzzing"]
    argv += ["-H", f"Authorization: Bearer {fault_stack.keys['alice']}", "--seed", "1", "--workers", "1"]
    argv += ["--request-timeout", "90", "--report", "json", "--report-json-path", str(report_path)]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.faults.schemathesis_hooks",
        "PYTHONPATH": str(services.ROOT),
    }
    started = time.monotonic()
    out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    took = time.monotonic() - started
    assert out.returncode == 0, f"{out.stdout[-12000:]}{out.stderr[-3000:]}\n(report: {report_path})"
    summary = _summary(out.stdout)
    report(
        "schemathesis against the OpenAPI document",
        tried=f"{summary.get('operations', '?')} operations, {summary.get('generated', '?')} generated requests "
        f"(examples, coverage, fuzzing; {MAX_EXAMPLES} examples per operation, seed 1) in {took:.0f} s",
        checks=CHECKS.replace(",", ", "),
        failures=0,
        lost=0,
    )


def _summary(stdout: str) -> dict[str, str]:
    """The counts from the run's summary lines ("Tested: 36", "3849 generated, ...")."""
    found: dict[str, str] = {}
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("Tested:"):
            found["operations"] = line.split(":", 1)[1].strip()
        if " generated," in line:
            found["generated"] = line.split(" generated", 1)[0].strip()
    return found
