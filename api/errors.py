"""The API's exception tree, rendered once as the OpenAI error envelope."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerOperationalError
from redis.exceptions import RedisError
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.schemas.errors import ErrorEnvelope
from ensemble_core.errors import ConfigError, EnsembleError

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout_error",
}


# every answer but a 2xx, as the OpenAPI document shows it (one envelope for all of them)
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope, "description": description}
    for status, description in {
        400: "bad request: a body that does not validate or an invalid value (`code` and `param` say what)",
        401: "missing or invalid API key (`Authorization: Bearer <key>`)",
        403: "this key may not do that (config changes need an admin key)",
        404: "no such thing, or not this tenant's",
        409: "conflict with the current state (e.g. cancelling a finished job)",
        413: "request body, or batch, too large",
        422: "a value this service refuses to act on (e.g. a webhook_url to a private address)",
        429: "rate limit or queue full; see `Retry-After`",
        503: "Postgres or Redis unavailable; see `Retry-After`",
        504: "the job did not finish in time: the request's `timeout` passed (`timeout`: the job goes "
        "on, `error.job_id`, `Location`) or its `deadline_s` (`deadline_exceeded`: the job stopped, its "
        "partial result is kept)",
    }.items()
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.extra = extra or {}


class ServiceUnavailable(ApiError):
    def __init__(self, message: str, *, code: str = "service_unavailable", retry_after_s: int = 5) -> None:
        super().__init__(503, message, code=code, headers={"Retry-After": str(retry_after_s)})


def envelope(
    status: int, message: str, *, code: str | None, param: str | None = None, **extra: Any
) -> dict[str, Any]:
    error: dict[str, Any] = {
        "message": message,
        "type": _TYPES.get(status, "server_error"),
        "param": param,
        "code": code,
    }
    error.update(extra)
    return {"error": error}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_req: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            envelope(exc.status, exc.message, code=exc.code, param=exc.param, **exc.extra),
            status_code=exc.status,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        message = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
            for e in errors[:5]
        )
        # 400 as OpenAI (and vLLM) answer a body that does not validate: SDK users catch
        # BadRequestError; ``param`` names the first field at fault
        return JSONResponse(
            envelope(400, message or "invalid request", code="invalid_request", param=".".join(loc) or None),
            status_code=400,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, ApiError):
            # FastAPI wraps errors raised while reading the body (e.g. the size limit)
            return await _api_error(req, exc.__cause__)
        code = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(
            envelope(exc.status_code, str(exc.detail), code=code),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(DataError)
    async def _bad_value(_req: Request, exc: Exception) -> JSONResponse:
        # a value Postgres cannot hold (a NUL character, a number out of range): the client's
        # mistake, not an outage
        message = str(getattr(exc, "orig", exc)).splitlines()[0][:200]
        return JSONResponse(
            envelope(
                400, f"a value of this request cannot be stored or searched: {message}", code="invalid_value"
            ),
            status_code=400,
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(PoolTimeoutError)
    async def _database_down(_req: Request, exc: Exception) -> JSONResponse:
        # PoolTimeoutError: every connection is busy (or hangs on a database going away); the
        # log says which it was (an outage, a pool timeout, a deadlock's SQLSTATE 40P01)
        orig = getattr(exc, "orig", None)
        sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        logging.getLogger(__name__).warning(
            "503 database_unavailable: %s (sqlstate %s): %s", type(exc).__name__, sqlstate, str(exc)[:300]
        )
        return JSONResponse(
            envelope(503, "the database is unavailable; retry shortly", code="database_unavailable"),
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(RedisError)
    @app.exception_handler(BrokerOperationalError)
    async def _broker_down(_req: Request, exc: Exception) -> JSONResponse:
        # Redis is the transport only: what needs it (queueing, live events) waits for it
        return JSONResponse(
            envelope(503, "the job queue (broker) is unavailable; retry shortly", code="broker_unavailable"),
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(EnsembleError)
    async def _ensemble_error(_req: Request, exc: EnsembleError) -> JSONResponse:
        # e.g. a stored config version that the engine no longer accepts
        status = 400 if isinstance(exc, ConfigError) else 500
        return JSONResponse(envelope(status, exc.message, code=exc.code), status_code=status)

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        import logging

        logging.getLogger("api").exception("unhandled error")
        return JSONResponse(
            envelope(500, f"internal error ({type(exc).__name__})", code="internal_error"), status_code=500
        )
