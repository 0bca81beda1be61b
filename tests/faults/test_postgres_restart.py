"""Restart Postgres during load: 503s (with Retry-After) during the outage, no 500, and
everything accepted finishes.

The cluster is this test's own (``initdb`` in a temporary directory, as the ``postgres``
user): the shared one on 5432 is never touched. ``pg_ctl stop -m fast`` ends every session,
as a restart or a failover does. Workers retry their claim and their final write while it is
down (``database_retry_s``); the API answers 503 and its pool reconnects by itself."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest

from persistence.db import create_database_if_missing, upgrade_to_head
from tests.faults import infra, load
from tests.faults.infra import report

SUBMISSIONS = 160
DOWN_S = 4.0


@pytest.fixture(scope="module")
def postgres_stack(
    tiny_specs, redis_server, tmp_path_factory
) -> Iterator[tuple[infra.FaultStack, infra.PostgresServer]]:
    if not infra.PostgresServer.available():
        pytest.skip("no Postgres server binaries (initdb, pg_ctl) or no postgres user on this machine")
    server = infra.PostgresServer()
    try:
        server.start()
        create_database_if_missing(server.url())
        upgrade_to_head(server.url())
        stack = infra.start_stack(
            server.url(), redis_server.url(1), tiny_specs, tmp_path_factory.mktemp("pg-logs")
        )
        try:
            yield stack, server
        finally:
            stack.stop()
    finally:
        server.destroy()


def test_everything_accepted_finishes_across_a_postgres_restart(postgres_stack):
    stack, server = postgres_stack
    with stack.client() as client:  # the models are loaded before the load starts
        assert (
            client.post("/v1/chat/completions", json={**load.SMALL, "prompt": "warm up"}).status_code == 200
        )

    def restart_postgres() -> None:
        server.stop("fast")
        time.sleep(DOWN_S)
        server.start()

    try:
        outcomes, times = load.run(
            lambda: stack.client(timeout=120), SUBMISSIONS, fault_after=30, fault=restart_postgres
        )
        with stack.client() as client:
            final = load.wait_all_final(client, outcomes)
            stuck = [
                j["id"]
                for status in ("queued", "running")
                for j in client.get("/v1/jobs", params={"status": status, "limit": 1000}).json()["data"]
            ]
    except BaseException:
        print(stack.logs())
        raise

    accepted = [o for o in outcomes if o.accepted]
    unavailable = [o for o in outcomes if o.status == 503]
    server_errors = [
        o for o in outcomes if o.status is not None and o.status >= 500 and o.status not in (503, 504)
    ]
    frames_500 = sum(o.stream_frames_500 for o in outcomes)
    in_outage = [o for o in unavailable if times["fault_start"] - 1 <= o.at <= times["fault_end"] + 1]
    assert not [o for o in outcomes if o.status is None], "the API answered every request"
    assert not server_errors and frames_500 == 0, (
        f"never a 500: {[(o.kind, o.status, o.code) for o in server_errors]}"
    )
    assert unavailable, "some requests met the outage"
    assert {o.code for o in unavailable} <= {"database_unavailable"}
    assert set(final["jobs"]) <= {"succeeded"} and set(final["batch_items"]) <= {"succeeded"}
    assert not stuck, f"jobs left behind: {stuck}"
    jobs_done = sum(final["jobs"].values()) + sum(final["batch_items"].values())
    report(
        "Postgres stopped (-m fast) and started again during load",
        tried=f"{SUBMISSIONS} submissions from 4 clients ({', '.join(f'{k}: {n}' for k, n in Counter(o.kind for o in outcomes).items())}); "
        f"one every 60 ms; Postgres down {DOWN_S:.0f} s after the 30th answer",
        answers=load.statuses(outcomes),
        unavailable_503=f"{len(unavailable)} (database_unavailable, Retry-After; {len(in_outage)} sent during the outage)",
        accepted=f"{len(accepted)} submissions = {jobs_done} jobs, all finished: {dict(final['jobs'] + final['batch_items'])}",
        server_errors_500=len(server_errors) + frames_500,
        wall_time=f"{times['end'] - times['start']:.1f} s",
        lost=len(stuck),
    )
