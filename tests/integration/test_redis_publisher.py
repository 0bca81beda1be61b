"""run_job messages made from a template (jobqueue/redis_publisher.py) are the bytes Celery and
kombu push, a real worker runs them, and a broker lost after the template was made is an error
callers classify as a broker error."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

from jobqueue import redis_publisher
from jobqueue.celery_config import BROKER_ERRORS, enqueue_jobs, enqueue_jobs_through_kombu, make_celery
from jobqueue.contract import MODELS_QUEUE
from jobqueue.routing import queue_for
from jobqueue.settings import QueueSettings
from persistence import repository
from persistence.db import Database
from persistence.models import Job, new_id
from tests import services

MEMBER_QUEUE = queue_for(["tiny-llama", "tiny-gpt2"], route_by_members=True)


def _masked(raw: bytes) -> tuple[str, dict]:
    """A pushed message with its delivery tag (a fresh uuid4 on either path) masked: the text,
    and the parsed message with its body decoded."""
    message = json.loads(raw)
    tag = message["properties"]["delivery_tag"]
    assert str(uuid.UUID(tag)) == tag
    message["properties"]["delivery_tag"] = "<tag>"
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return raw.decode().replace(tag, "<tag>"), message


def test_template_messages_are_the_messages_kombu_pushes():
    ids = [new_id("job") for _ in range(4)] + ["batch-7.item:0003", "j"]
    queues = {job_id: MEMBER_QUEUE for job_id in ids[::2]}
    with services.private_redis_db() as broker_url:
        app = make_celery(QueueSettings(broker_url=broker_url))
        broker = redis.Redis.from_url(broker_url)
        pushed = {}
        for path in (enqueue_jobs_through_kombu, enqueue_jobs):
            path(app, ids, queues=queues)
            pushed[path] = {q: broker.lrange(q, 0, -1) for q in (MODELS_QUEUE, MEMBER_QUEUE)}
            broker.delete(MODELS_QUEUE, MEMBER_QUEUE)
        publisher = redis_publisher.publisher_for(app)
        assert publisher is not None and publisher.declined is None
        assert publisher.templated_queues == {MODELS_QUEUE, MEMBER_QUEUE}
        assert publisher.template(MEMBER_QUEUE).key == MEMBER_QUEUE
    kombu, template = pushed[enqueue_jobs_through_kombu], pushed[enqueue_jobs]
    assert [len(kombu[q]) for q in (MODELS_QUEUE, MEMBER_QUEUE)] == [3, 3]
    for queue in (MODELS_QUEUE, MEMBER_QUEUE):
        assert [_masked(m) for m in template[queue]] == [_masked(m) for m in kombu[queue]]
    first = _masked(template[MEMBER_QUEUE][-1])[1]  # LPUSH: the first sent is the last in the list
    assert first["body"][0] == [ids[0]] and first["headers"]["id"] == ids[0]
    assert first["properties"]["delivery_info"]["routing_key"] == MEMBER_QUEUE
    tags = [json.loads(m)["properties"]["delivery_tag"] for q in template.values() for m in q]
    assert len(set(tags)) == len(ids)


def test_an_id_json_would_escape_takes_the_kombu_path_and_arrives_whole():
    job_id = 'job-"quoted"\\é'
    with services.private_redis_db() as broker_url:
        app = make_celery(QueueSettings(broker_url=broker_url))
        enqueue_jobs(app, [job_id])
        [raw] = redis.Redis.from_url(broker_url).lrange(MODELS_QUEUE, 0, -1)
    message = json.loads(raw)
    assert message["headers"]["id"] == job_id
    assert json.loads(base64.b64decode(message["body"]))[0] == [job_id]


@contextmanager
def _tcp_proxy(port: int) -> Iterator[tuple[int, threading.Event]]:
    """A TCP proxy to 127.0.0.1:``port``; setting the event closes it and every connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop, open_sockets = threading.Event(), []

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:  # closed by stop
            pass

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(("127.0.0.1", port))
            open_sockets.extend([client, upstream])
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()
        listener.close()
        for s in open_sockets:
            s.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], stop
    finally:
        stop.set()
        thread.join(5)


def test_a_broker_lost_after_the_template_was_made_is_a_broker_error(caplog):
    with services.private_redis_db() as broker_url:
        base, db_number = broker_url.rsplit("/", 1)
        with _tcp_proxy(int(base.rsplit(":", 1)[1])) as (proxy_port, stop):
            app = make_celery(QueueSettings(broker_url=f"redis://127.0.0.1:{proxy_port}/{db_number}"))
            app.conf.broker_connection_max_retries = 1  # as the API sets them (api/app.py)
            enqueue_jobs(app, [new_id("job")])  # the template is made, the client connected
            stop.set()
            time.sleep(0.5)
            with caplog.at_level("INFO", logger="jobqueue.celery_config"), pytest.raises(BROKER_ERRORS):
                enqueue_jobs(app, [new_id("job")])
        # the template's pipeline failed first; kombu's path, with its retries, failed too
        assert "sending 1 jobs by template failed" in caplog.text
        assert redis.Redis.from_url(broker_url).llen(MODELS_QUEUE) == 1


def test_an_unreachable_broker_fails_the_first_send_as_fast_as_the_kombu_path():
    elapsed = {}
    for path in (enqueue_jobs, enqueue_jobs_through_kombu):
        app = make_celery(QueueSettings(broker_url="redis://127.0.0.1:1/3"))  # a closed port
        app.conf.broker_connection_max_retries = 1  # as the API sets them (api/app.py)
        app.conf.task_publish_retry_policy = {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        }
        started = time.monotonic()
        with pytest.raises(BROKER_ERRORS):
            path(app, [new_id("job")])  # the template cannot be made: nothing is sent
        elapsed[path] = time.monotonic() - started
    assert elapsed[enqueue_jobs] < elapsed[enqueue_jobs_through_kombu] + 1.0, elapsed


def _wait_succeeded(stack, job_ids: list[str], timeout: float = 90) -> list[str]:
    pending, deadline = set(job_ids), time.monotonic() + timeout
    with stack.client() as client:
        while pending and time.monotonic() < deadline:
            for job_id in list(pending):
                if client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded":
                    pending.discard(job_id)
            time.sleep(0.2)
    return sorted(pending)


def test_jobs_sent_by_template_are_run_by_a_real_worker(stack, show_logs_on_failure):
    # a job the API stored and sent gives a request the worker can run; copies of it are sent
    # from here, by template
    with stack.client() as client:
        answer = client.post(
            "/v1/chat/completions",
            json={
                "model": "ensemble",
                "messages": [{"role": "user", "content": "2+2?"}],
                "max_tokens": 2,
                "background": True,
            },
        )
    assert answer.status_code == 202, answer.text
    db = Database(stack.database_url)
    try:
        with db.transaction() as session:
            model = session.get(Job, answer.json()["id"])
            copies = [
                repository.create_job(
                    session, kind=model.kind, request=model.request, config_version_id=model.config_version_id
                ).id
                for _ in range(3)
            ]
    finally:
        db.dispose()
    app = make_celery(QueueSettings(broker_url=stack.broker_url))
    enqueue_jobs(app, copies)
    publisher = redis_publisher.publisher_for(app)
    assert publisher is not None and publisher.declined is None and MODELS_QUEUE in publisher.templated_queues
    assert _wait_succeeded(stack, copies) == []
