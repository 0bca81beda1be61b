"""Server-sent events relayed from the worker: one chunk per published piece of text (a few
tokens where the text is streamed as decoded, else an accepted segment; see
``workers.stream_events``).

The API subscribes to the job's event channel *before* the task is sent, so no segment can be
published unheard. Pub/sub keeps nothing, though, so when the job ends the stream is checked
against the stored result (Postgres is the truth): whatever text the events missed is sent as
one last chunk, and a stream always ends with the complete answer.

Chunks follow OpenAI's formats (``chat.completion.chunk``, or ``text_completion`` for the
prompt form) and add ``choices[i].metadata = {"model", "round"}``: who wrote the piece.

A client that disconnects before the stream ends cancels its job (``job_cancel``): the worker
stops within a decode step. (A ``background`` job is the way to submit and leave.)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.concurrency import run_in_threadpool

from api.errors import envelope
from api.services import job_cancel, job_service, structured_request
from api.services.completion_service import (
    PreparedJob,
    choice_metadata,
    logprobs_view,
    submit,
    usage_view,
)
from api.state import AppState
from persistence import repository
from persistence.models import Job, new_id

log = logging.getLogger(__name__)


async def open_stream(
    state: AppState, prepared: PreparedJob, idempotency_key: str | None
) -> tuple[Job, AsyncIterator[str]]:
    """Submit the job with the subscription already open; returns the job and its SSE frames.

    Errors before the first frame (validation, queue full, broker down) raise as usual and
    answer with a normal JSON error. The stream waits on an asyncio subscription: it holds no
    thread, only its database reads borrow one briefly."""
    job_id = new_id("job")
    subscription = await state.bus.subscribe_async(job_id)
    try:
        job, _created = await run_in_threadpool(submit, state, prepared, idempotency_key, job_id=job_id)
        if job.id != job_id:
            # an Idempotency-Key retry attached to an earlier job: listen to that one
            await subscription.close()
            subscription = await state.bus.subscribe_async(job.id)
    except BaseException:
        await subscription.close()
        raise
    return job, _frames(state, prepared, job, job_service.JobEvents(job.id, subscription))


async def _frames(state: AppState, prepared: PreparedJob, job: Job, subscription: Any) -> AsyncIterator[str]:
    ended = False  # the stream reached its end (the answer, an error frame, the 504 frame)
    try:
        async for frame in _relay(state, prepared, job, subscription):
            # set before the last frame goes out: a client may hang up as soon as it has it
            ended = ended or frame == _DONE or frame.startswith(_ERROR_PREFIX)
            yield frame
        ended = True
    except Exception as exc:  # noqa: BLE001 - the 200 is sent already: the error goes in the stream
        ended = True
        log.exception("stream of job %s broke", job.id)
        database = isinstance(exc, (DBAPIError, PoolTimeoutError))
        yield _error_frame(
            503 if database else 500,
            "the database is unavailable; poll the job"
            if database
            else f"internal error ({type(exc).__name__})",
            code="database_unavailable" if database else "internal_error",
            job_id=job.id,
        )
    finally:
        await subscription.close()
        if not ended:
            await job_cancel.cancel_after_client_left(state, job.id, "dropped the stream")


async def _relay(state: AppState, prepared: PreparedJob, job: Job, subscription: Any) -> AsyncIterator[str]:
    chunks = _ChunkWriter(job, prepared)
    sent: dict[int, str] = {}
    deadline = time.monotonic() + prepared.timeout
    last_frame = time.monotonic()
    if prepared.form == "chat":
        for index in range(prepared.n):
            yield chunks.frame(index, {"role": "assistant", "content": ""})
    final = repository.is_final(job.status)
    newest_attempt = 0
    # a tool call is sent whole at the end (its JSON is not content); plain text is relayed
    structured = prepared.generation.structured
    holds_text = prepared.form == "chat" and structured is not None and structured.is_tool_call
    while not final and time.monotonic() < deadline:
        event = await subscription.get(min(1.0, max(0.0, deadline - time.monotonic())))
        if event is None:
            final = repository.is_final((await _load(state, job.id)).status)
            if not final and time.monotonic() - last_frame >= state.settings.stream_keepalive_s:
                last_frame = time.monotonic()
                yield ": keep-alive\n\n"
            continue
        # a worker that lost its job to a newer attempt (sweeper re-queue) may still be
        # talking: its events are dropped (its writes are fenced off in Postgres too)
        attempt = int(event.get("attempt") or 0)
        if attempt < newest_attempt:
            continue
        newest_attempt = attempt
        if event.get("type") == "segment" and event.get("text") and not holds_text:
            index = int(event.get("index") or 0)
            sent[index] = sent.get(index, "") + event["text"]
            last_frame = time.monotonic()
            yield chunks.frame(
                index, event["text"], metadata={"model": event.get("model"), "round": event.get("round")}
            )
        elif event.get("type") == "done":
            final = True
    job = await _load(state, job.id)
    if not repository.is_final(job.status):
        yield _error_frame(
            504,
            f"the job did not finish within the timeout; it goes on: poll /v1/jobs/{job.id}",
            code="timeout",
            job_id=job.id,
        )
        return
    if job.status != "succeeded":
        yield _error_frame(
            job_service.final_job_status(job),
            job.error_message or f"job {job.status}",
            code=job.error_code or job.status,
            job_id=job.id,
        )
        return
    for frame in _finish(chunks, job, prepared, sent):
        yield frame


async def _load(state: AppState, job_id: str) -> Job:
    return await run_in_threadpool(job_service.load_job, state, job_id)


def _finish(chunks: _ChunkWriter, job: Job, prepared: PreparedJob, sent: dict[int, str]) -> Iterator[str]:
    result = job.result or {}
    choices = result.get("choices") or [result]
    structured = prepared.generation.structured if prepared.form == "chat" else None
    for index, choice in enumerate(choices):
        text, streamed = choice.get("text", ""), sent.get(index, "")
        finish_reason = choice.get("finish_reason") or "stop"
        _, tool_calls, finish_reason = structured_request.message_parts(
            text, finish_reason, structured, f"call_{job.id}_{index}"
        )
        if tool_calls:
            delta = {"tool_calls": [{"index": i, **call} for i, call in enumerate(tool_calls)]}
            yield chunks.frame(index, delta, metadata={"model": None, "round": None})
        elif text.startswith(streamed) and len(text) > len(streamed):
            # segments the relay did not hear (or text the engine trimmed after a round)
            yield chunks.frame(index, text[len(streamed) :], metadata={"model": None, "round": None})
        if choice.get("logprobs") is not None:
            # the answer's token log-probabilities, all in one chunk once the job is done
            logprobs = logprobs_view(choice["logprobs"], prepared.form)
            yield chunks.frame(index, "", logprobs=logprobs, metadata={"model": None, "round": None})
        yield chunks.frame(
            index,
            None,
            finish_reason=finish_reason,
            metadata=choice_metadata(job, choice) | {"trace": None},
        )
    if prepared.include_usage:
        yield chunks.usage_frame(usage_view(result))
    yield _DONE


class _ChunkWriter:
    def __init__(self, job: Job, prepared: PreparedJob) -> None:
        self.form = prepared.form
        self.base = {
            "id": job.id,
            "object": "chat.completion.chunk" if self.form == "chat" else "text_completion",
            "created": int(job.created_at.timestamp()),
            "model": prepared.model,
        }
        if self.form == "chat":
            self.base["system_fingerprint"] = None

    def frame(
        self,
        index: int,
        content: str | dict[str, Any] | None,
        *,
        finish_reason: str | None = None,
        metadata: dict[str, Any] | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> str:
        choice: dict[str, Any] = {"index": index}
        if self.form == "chat":
            if isinstance(content, dict):
                choice["delta"] = content
            else:
                choice["delta"] = {"content": content} if content is not None else {}
        else:
            choice["text"] = content if isinstance(content, str) else ""
        choice["logprobs"] = logprobs
        choice["finish_reason"] = finish_reason
        if metadata is not None:
            choice["metadata"] = metadata
        return _sse({**self.base, "choices": [choice]})

    def usage_frame(self, usage: dict[str, Any]) -> str:
        return _sse({**self.base, "choices": [], "usage": usage})


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


_DONE = "data: [DONE]\n\n"
_ERROR_PREFIX = 'data: {"error":'


def _error_frame(status: int, message: str, *, code: str, job_id: str) -> str:
    return _sse(envelope(status, message, code=code, job_id=job_id))
