"""docker-compose.yml: every role is there with a health check; `docker compose config` when available."""

from __future__ import annotations

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


def _compose() -> list[str] | None:
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.mark.skipif(_compose() is None, reason="no docker compose client on this machine")
def test_docker_compose_config_validates():
    out = subprocess.run([*_compose(), "config", "-q"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
