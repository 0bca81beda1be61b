"""Sending run_job tasks to a Redis broker cheaply: the bytes Celery would push, without Celery.

Through Celery and kombu one message costs about a millisecond of the API's CPU (Celery builds
two dozen headers, ``argsrepr`` through ``saferepr``; kombu acquires a producer and routes the
message), yet for one task name the message differs from job to job in a handful of values only.
So per process and queue one message is built by the real machinery (``create_task_message``,
``send_task_message``, kombu's ``basic_publish``) and caught where kombu's Redis channel would
push it (``Channel._put``; see ``jobqueue.redis_transport.catching_puts``), and it becomes a
template: its JSON text, cut where the job id, the base64 body and the delivery tag go. Each
message after that is one string join, and a group's messages go out in one pipeline.

The template checks itself: a second real message, for another id, must come out of the template
byte for byte. A value that varies per message and is not known here (a Celery or kombu upgrade)
fails the check, and then no template is kept for that app: every message takes the kombu path
(:func:`send_through_kombu`), as it does for other brokers (``memory://``) and for ids that JSON
or ``repr`` would escape.

What kombu's put does besides the LPUSH, and why the template may skip it:

- the anonymous exchange (Celery's choice for a direct queue) routes by the queue name alone:
  no ``_kombu.binding.*`` lookup and no fanout publish happen on this path in kombu either;
- a PEXPIRE follows for a queue the channel declared with an expiry: the sending channel
  declares nothing (``declare=[]``), none of our queues has one, and such a queue gets no
  template;
- the ``unacked`` bookkeeping is the consumer's, at delivery; a worker cannot tell these
  messages from kombu's;
- Celery's ``before_task_publish``/``after_task_publish`` signals do not fire, so while any
  receiver is connected (a tracing library adding headers, say) the kombu path is taken.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import threading
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery, signals
from kombu.utils.json import dumps as kombu_dumps

from jobqueue import redis_transport
from jobqueue.contract import MODELS_QUEUE, RUN_JOB_TASK

log = logging.getLogger(__name__)

# ids that JSON and repr() both write as they are, short enough that Celery's argsrepr keeps
# them whole (it cuts at 1024 characters): every id the API makes (``job-<hex>``)
_PLAIN_ID = re.compile(r"[A-Za-z0-9_.:-]{1,200}")


def send_through_kombu(app: Celery, producer: Any, job_id: str, queue: str) -> None:
    """One run_job message through Celery and kombu (the slow path, and the template's source).

    The Celery task id is the job id: Flower's task page ``/task/<job id>`` shows the job.
    declare=[]: no per-message "declared yet?" check (a sixth of the send's CPU). The messages
    go to the anonymous exchange, which on Redis pushes onto the list named by the queue
    whether or not it was declared; the workers declare what they read."""
    amqp = app.amqp
    message = amqp.create_task_message(job_id, RUN_JOB_TASK, [job_id], {}, create_sent_event=False)
    amqp.send_task_message(producer, RUN_JOB_TASK, message, queue=queue, declare=[])


class NoTemplate(Exception):
    """This broker or configuration cannot be sent to by template; use the kombu path."""


@dataclass(frozen=True)
class RunJobTemplate:
    """The message kombu's Redis channel would LPUSH for one queue, with holes for a job.

    ``parts`` is the message's JSON text around the holes; ``holes`` names what fills each gap
    (``"id"``, ``"body"``: the base64 body, ``"tag"``: a fresh delivery tag); ``body_parts`` is
    the decoded body around the job id."""

    key: str
    parts: tuple[str, ...]
    holes: tuple[str, ...]
    body_parts: tuple[str, str]

    def render(self, job_id: str, delivery_tag: str | None = None) -> str:
        body_text = self.body_parts[0] + job_id + self.body_parts[1]
        values = {
            "id": job_id,
            "body": base64.b64encode(body_text.encode()).decode(),
            # what kombu's virtual channel uses: a uuid4 as text
            "tag": delivery_tag or str(uuid.uuid4()),
        }
        out = [self.parts[0]]
        for hole, part in zip(self.holes, self.parts[1:], strict=True):
            out.append(values[hole])
            out.append(part)
        return "".join(out)


@dataclass(frozen=True)
class _Caught:
    key: str
    message: dict[str, Any]


def _catch(app: Celery, job_id: str, queue: str) -> tuple[_Caught, dict[str, Any]]:
    """Send one message through Celery and kombu, caught where the Redis channel would push it
    (a probe must never reach a worker). Also returns the channel's connection parameters: the
    broker URL's settings as kombu applies them."""
    caught: list[tuple[_Caught, dict[str, Any]]] = []

    def catch(channel: Any, queue_name: str, message: dict[str, Any]) -> None:
        # kombu's own (private) helpers name the list and the connection: a kombu that no
        # longer has them gets no template rather than a failed send
        try:
            if channel.global_keyprefix or not channel.supports_batch_publish:
                # prefixed keys, or a client that may replay a pipeline: kombu handles those
                raise NoTemplate("a global key prefix or a retrying Redis client")
            if channel._expires and queue_name in channel._expires:
                raise NoTemplate(f"queue {queue_name!r} expires (kombu adds a PEXPIRE)")
            key = channel._q_for_pri(queue_name, channel._get_message_priority(message, reverse=False))
            params = channel._connparams()
        except (AttributeError, TypeError) as exc:
            raise NoTemplate(f"this kombu's Redis channel differs: {exc!r}") from exc
        caught.append((_Caught(key, message), params))

    with app.producer_or_acquire() as producer:
        # known without connecting; only this transport's channel can catch instead of push
        if not isinstance(producer.connection.transport, redis_transport.Transport):
            raise NoTemplate(f"the broker transport is {type(producer.connection.transport).__module__}")
        # the channel is first touched inside the publish, as on the kombu path, so that a broker
        # that does not answer fails as fast (the publish retry policy, not the connection's)
        with redis_transport.catching_puts(catch):
            send_through_kombu(app, producer, job_id, queue)
    if len(caught) != 1:
        raise NoTemplate(f"kombu put {len(caught)} messages for one task")
    return caught[0]


def _build_template(app: Celery, queue: str) -> tuple[RunJobTemplate, dict[str, Any]]:
    probe, other = (f"ehub-probe-{uuid.uuid4().hex}" for _ in range(2))
    first, params = _catch(app, probe, queue)
    message = first.message
    properties = message["properties"]
    if properties.get("body_encoding") != "base64":
        raise NoTemplate(f"body encoding {properties.get('body_encoding')!r}")
    body_text = base64.b64decode(message["body"]).decode()
    body_parts = body_text.split(probe)
    if len(body_parts) != 2:
        raise NoTemplate("the body does not hold the job id once")
    body_hole, tag_hole = (f"ehub-hole-{uuid.uuid4().hex}" for _ in range(2))
    text = kombu_dumps({**message, "body": body_hole, "properties": {**properties, "delivery_tag": tag_hole}})
    names = {probe: "id", body_hole: "body", tag_hole: "tag"}
    pieces = re.split("(" + "|".join(map(re.escape, names)) + ")", text)
    template = RunJobTemplate(
        key=first.key,
        parts=tuple(pieces[0::2]),
        holes=tuple(names[p] for p in pieces[1::2]),
        body_parts=(body_parts[0], body_parts[1]),
    )
    # the check: a second real message, for another id, is what the template makes of that id
    second, _ = _catch(app, other, queue)
    tag = second.message["properties"]["delivery_tag"]
    if second.key != template.key or template.render(other, tag) != kombu_dumps(second.message):
        raise NoTemplate("a value of the message varies per message in a way not known here")
    return template, params


class RedisRunJobPublisher:
    """One per app and process: the templates of the queues sent to, and one Redis client with
    the broker's connection settings (kombu's own parameters for the broker URL)."""

    def __init__(self, app: Celery) -> None:
        # weakly: the app keys the table of publishers, and a strong one would keep it alive
        self._app = weakref.ref(app)
        self._templates: dict[str, RunJobTemplate] = {}
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()
        # why no template can be built for this app (then every message takes the kombu path)
        self.declined: str | None = None

    @property
    def templated_queues(self) -> frozenset[str]:
        """The queues whose messages are made from a template so far."""
        return frozenset(self._templates)

    def template(self, queue: str) -> RunJobTemplate:
        """The queue's template, built on first use. Raises :class:`NoTemplate`, or the broker's
        error when it cannot be reached (nothing is kept then: the next call tries again)."""
        found = self._templates.get(queue)
        if found is not None:
            return found
        with self._lock:
            app = self._app()
            if app is None:
                raise NoTemplate("the app is gone")
            if queue not in self._templates:
                template, params = _build_template(app, queue)
                if self._client is None:
                    self._client = redis.Redis(connection_pool=redis.ConnectionPool(**params))
                self._templates[queue] = template
            return self._templates[queue]

    def publish(self, job_ids: list[str], queues: Mapping[str, str] | None) -> bool:
        """LPUSH every job's message in one pipeline, one LPUSH per list; False, having sent
        nothing, when these jobs cannot be sent by template (the caller takes the kombu path).

        A raised error (a ``redis.RedisError``, or the broker's error while a template was
        being built) leaves each message sent or not: callers treat all as unsent."""
        if self.declined is not None:
            return False
        by_key: dict[str, list[str]] = {}
        try:
            for job_id in job_ids:
                if not _PLAIN_ID.fullmatch(job_id):
                    return False
                template = self.template(queues.get(job_id, MODELS_QUEUE) if queues else MODELS_QUEUE)
                # LPUSH k a b is LPUSH k a; LPUSH k b: the list ends as kombu's pushes leave it
                by_key.setdefault(template.key, []).append(template.render(job_id))
        except NoTemplate as exc:
            self.declined = str(exc)
            log.info("run_job messages take the kombu path for this app: %s", exc)
            return False
        if not by_key:
            return True
        assert self._client is not None  # made with the first template
        with self._client.pipeline(transaction=False) as pipe:
            for key, messages in by_key.items():
                pipe.lpush(key, *messages)
            pipe.execute()
        return True


# per app, and per process: a template's ``origin`` header names the process (host and pid)
_publishers: weakref.WeakKeyDictionary[Celery, tuple[int, RedisRunJobPublisher]] = weakref.WeakKeyDictionary()
_publishers_lock = threading.Lock()


def publisher_for(app: Celery) -> RedisRunJobPublisher | None:
    """The app's template publisher for this process, or None while a receiver of Celery's
    publish signals is connected (the template would skip them)."""
    if signals.before_task_publish.receivers or signals.after_task_publish.receivers:
        return None
    pid = os.getpid()
    entry = _publishers.get(app)
    if entry is None or entry[0] != pid:
        with _publishers_lock:
            entry = _publishers.get(app)
            if entry is None or entry[0] != pid:
                entry = (pid, RedisRunJobPublisher(app))
                _publishers[app] = entry
    return entry[1]
