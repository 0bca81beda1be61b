"""``/v1/completions`` with a list of prompts: one job per prompt, one answer with them all.

As OpenAI numbers them, the ``n`` choices of prompt ``i`` are choices ``i * n`` to
``i * n + n - 1``; usage adds up over the prompts. Every prompt is validated before any job is
submitted, and all jobs are submitted before the first is waited for, so they run side by side.
An ``Idempotency-Key`` becomes one key per prompt (``KEY#i``): a retry attaches to every job.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool

from api.errors import ApiError
from api.schemas.openai import PromptFields
from api.services import completion_service, job_service, token_prompts
from api.services.completion_service import PreparedJob
from api.state import AppState
from persistence.models import Job


async def answer_each(
    state: AppState,
    body: PromptFields,
    idempotency_key: str | None,
    *,
    tenant: str | None,
    restricted: bool,
    **prepare_fields: Any,
) -> dict[str, Any]:
    prompts = token_prompts.split(body.prompt)
    if body.stream or body.background:
        raise ApiError(
            400,
            "a list of prompts is answered in one JSON response; send one prompt per request to "
            "stream it or run it in the background",
            code="invalid_request",
            param="stream" if body.stream else "background",
        )
    # validating and submitting borrow a pool thread; the waits hold none
    prepared, jobs = await run_in_threadpool(
        _submit_all, state, body, prompts, idempotency_key, tenant, restricted, prepare_fields
    )
    answers = []
    for job, one in zip(jobs, prepared, strict=True):
        done = await job_service.wait_for_job(state, job.id, one.timeout)
        job_service.raise_unless_succeeded(done)
        answers.append(completion_service.answer(done, one.form, one.model))
    return merge(answers, body.n)


def _submit_all(
    state: AppState,
    body: PromptFields,
    prompts: list[Any],
    idempotency_key: str | None,
    tenant: str | None,
    restricted: bool,
    prepare_fields: dict[str, Any],
) -> tuple[list[PreparedJob], list[Job]]:
    prepared: list[PreparedJob] = []
    for index, prompt in enumerate(prompts):
        try:
            one = completion_service.prepare(
                state, body.model_copy(update={"prompt": prompt}), restricted=restricted, **prepare_fields
            )
        except ApiError as exc:
            exc.message = f"prompt[{index}]: {exc.message}"
            exc.args = (exc.message,)
            raise
        one.tenant = tenant
        prepared.append(one)
    job_service.refuse_when_queue_full(state, adding=len(prepared))
    jobs = [
        completion_service.submit(state, one, f"{idempotency_key}#{i}" if idempotency_key else None)[0]
        for i, one in enumerate(prepared)
    ]
    return prepared, jobs


def merge(answers: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """One answer: the first job's id and time, choices renumbered per prompt, usage summed."""
    merged = dict(answers[0])
    choices = []
    for prompt_index, answer in enumerate(answers):
        for choice in answer["choices"]:
            choices.append({**choice, "index": prompt_index * n + int(choice["index"])})
    merged["choices"] = choices
    usage: dict[str, Any] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for answer in answers:
        for key in usage:
            usage[key] += int(answer["usage"].get(key, 0))
    merged["usage"] = usage
    merged["job_ids"] = [a["id"] for a in answers]
    return merged
