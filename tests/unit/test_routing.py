"""Routing by member set (jobqueue.routing): queue names, the queues a worker reads, the job's
member set, and the worker command's flags. The routing itself, with real workers, is
tests/faults/test_routing.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ensemble_core.spec import EnsembleSpec, ModelSpec
from ensemblehub.services import member_worker_queues
from jobqueue.routing import (
    MAX_MEMBERS_PER_WORKER,
    job_members,
    member_set_queue,
    parse_members,
    queue_for,
    queues_held,
)
from tests.services import ROOT


def test_a_member_set_has_one_stable_queue_whatever_the_order():
    assert member_set_queue(["b", "a", "a"]) == member_set_queue(["a", "b"]) == "models@a+b"
    assert member_set_queue(["SmolLM2-135M-Instruct"]) == "models@SmolLM2-135M-Instruct"


def test_names_a_queue_list_cannot_carry_are_hashed_not_mangled():
    odd = member_set_queue(["my model", "b"])
    assert odd.startswith("models@set-") and odd == member_set_queue(["b", "my model"])
    assert "," not in member_set_queue(["a,b"]) and member_set_queue(["a,b"]) != member_set_queue(["a", "b"])


def test_without_routing_every_job_goes_to_the_models_queue():
    assert queue_for(["a", "b"], route_by_members=False) == "models"
    assert queue_for(None, route_by_members=True) == "models"
    assert queue_for(["b", "a"], route_by_members=True) == "models@a+b"


def test_a_worker_reads_every_subset_of_its_members():
    assert sorted(queues_held(["b", "a"])) == ["models@a", "models@a+b", "models@b"]
    # so a job on any subset of what a worker holds has a queue that worker reads
    assert queue_for(["a"], route_by_members=True) in queues_held(["a", "b"])
    too_many = [f"m{i}" for i in range(MAX_MEMBERS_PER_WORKER + 1)]
    with pytest.raises(ValueError, match="at most"):
        queues_held(too_many)


def test_member_worker_queues_replace_the_default_models_queue_only():
    assert member_worker_queues("models,webhooks,maintenance", ["a"]) == "models@a,webhooks,maintenance"
    assert member_worker_queues("models", ["b", "a"]) == "models@a,models@b,models@a+b"
    assert parse_members(" a, b ,,a") == ["a", "b"]


def test_a_jobs_members_are_the_versions_or_the_ones_it_names():
    spec = EnsembleSpec(model_specs=[ModelSpec(path="/m/x", name="x"), ModelSpec(path="/m/y")])
    assert job_members(spec) == ["x", "y"]
    assert job_members(spec, ["y"]) == ["y"]
    assert job_members(spec, ["unknown"]) == ["x", "y"]  # it fails as model_not_found, anywhere


def test_the_worker_command_refuses_too_many_members_before_starting():
    members = ",".join(f"m{i}" for i in range(MAX_MEMBERS_PER_WORKER + 1))
    out = subprocess.run(
        [sys.executable, "-m", "ensemblehub.cli", "worker", "--members", members],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "at most" in out.stderr, out.stderr
