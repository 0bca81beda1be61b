"""docker-compose.yml: every role is there with a health check, and ``docker compose config``
(or Debian's ``docker-compose`` 1.29, which needs no daemon) accepts the file. On CI
(``CI=true``; ``.ci/run`` installs ``docker-compose``) a missing client fails the test instead of
skipping it."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tests.services import ROOT


def load():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_every_role_with_health_checks():
    services = load()["services"]
    assert {
        "postgres",
        "redis",
        "migrate",
        "api",
        "worker",
        "worker-io",
        "beat",
        "worker-gpu",
        "flower",
    } <= set(services)
    for name in ("postgres", "redis", "api", "worker", "flower"):
        assert "healthcheck" in services[name], name
    assert services["migrate"]["command"] == ["ensemblehub", "migrate"]
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert "ENSEMBLEHUB_FLOWER_BASIC_AUTH" in services["flower"]["environment"]


def test_the_member_set_workers_hold_members_of_the_bundled_ensemble():
    from ensemble_core.bundled import default_ensemble_spec

    services = load()["services"]
    bundled = {m.display_name for m in default_ensemble_spec().model_specs}
    for name in ("worker-ensemble", "worker-smollm2"):
        command = services[name]["command"]
        assert services[name]["profiles"] == ["members"]
        members = command[command.index("--members") + 1].split(",")
        assert set(members) <= bundled, (name, members)
    assert "ENSEMBLEHUB_ROUTE_BY_MEMBERS" in services["api"]["environment"]


def _compose() -> list[str] | None:
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_validates():
    compose = _compose()
    if compose is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("no docker compose client on CI: .ci/run installs Debian's docker-compose")
        pytest.skip("no docker compose client on this machine (apt-get install docker-compose)")
    out = subprocess.run([*compose, "config", "-q"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
