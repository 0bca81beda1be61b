"""Request guards: API keys and tenants (401/403), the rate limit (429), body size (413).

Keys live in Postgres, hashed (``ensemblehub keys create --tenant NAME [--admin]``). As soon as
one active key exists, every endpoint except ``/`` and ``/status`` needs
``Authorization: Bearer <key>`` (what OpenAI's clients send as their ``api_key``), and what a
request sees and creates belongs to its key's tenant. With no key at all the service is open,
to requests from this machine only (the start-up notice says so): a local developer needs no
key, and a server exposed by mistake answers nobody else.

Lookups are cached per process (``persistence/api_key_cache.py``): a trigger on ``api_keys``
notifies every API process of any change, which drops its cache, so a revoked key stops
within milliseconds of the revocation's commit; without the notifications (SQLite, the
listener reconnecting) every request asks the database. A cached answer costs the request no
thread-pool trip.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, envelope
from api.rate_limit import NoRateLimit
from api.state import AppState, state_of
from persistence import api_key_repository
from persistence.api_key_cache import MISSING

# the tenant of the keys in ENSEMBLEHUB_API_KEYS (the older, single-tenant way)
ENV_KEYS_TENANT = "default"
# peers that are this machine; "testclient" is Starlette's in-process client (no network peer)
LOCAL_CLIENTS = frozenset({"127.0.0.1", "::1", "localhost", "testclient"})


@dataclass(frozen=True)
class Principal:
    """Who is asking. ``tenant`` None is the open mode (no keys exist): one local user."""

    tenant: str | None
    admin: bool
    key_id: str | None = None


OPEN_MODE = Principal(tenant=None, admin=True)

# documents the scheme in OpenAPI (/docs gets an "Authorize" button); the check is ours
BEARER = HTTPBearer(auto_error=False, description="an API key made by `ensemblehub keys create`")


def _unauthorized(message: str, code: str) -> ApiError:
    return ApiError(401, message, code=code, headers={"WWW-Authenticate": "Bearer"})


async def require_api_key(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(BEARER)
) -> Principal:
    """Authenticate the request and count it against its tenant's rate limit.

    Routes that need the tenant take ``Depends(require_api_key)`` too: FastAPI runs it once
    per request. It is ``async`` so that a cached key costs no thread-pool trip; a lookup in
    the database and the rate limit's Redis round trip borrow a thread."""
    state = state_of(request)
    token = credentials.credentials.strip() if credentials and credentials.credentials.strip() else None
    principal = _env_key(state, token)
    if principal is None:
        key = _cache_key(token)
        found = state.api_keys.get(key)
        if found is MISSING:
            found = await run_in_threadpool(state.api_keys.lookup, key, lambda: _lookup(state, token))
        principal = _decide(request, token, found)
    if principal.tenant is not None and not isinstance(state.rate_limiter, NoRateLimit):
        await run_in_threadpool(charge, state, principal.tenant, 1)
    return principal


def charge(state: AppState, tenant: str | None, cost: int) -> None:
    """Count ``cost`` units against the tenant's rate limit (429 past it). A request counts
    one; a batch also counts its other items, so 50,000 items are not one request."""
    if tenant is None or cost <= 0:
        return
    retry_after = state.rate_limiter.hit(tenant, cost)
    if retry_after is not None:
        limit, window = state.settings.rate_limit_requests, state.settings.rate_limit_window_s
        raise ApiError(
            429,
            f"rate limit of tenant {tenant!r} reached ({limit} requests or batch items per {window} s); "
            f"retry in {int(retry_after)} s",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(int(retry_after))},
        )


def require_admin(principal: Principal = Depends(require_api_key)) -> Principal:
    if not principal.admin:
        raise ApiError(
            403,
            "changing the ensemble config needs an admin key (ensemblehub keys create --admin)",
            code="admin_key_required",
        )
    return principal


def _authenticate(state: AppState, request: Request, token: str | None) -> Principal:
    principal = _env_key(state, token)
    if principal is not None:
        return principal
    found = state.api_keys.lookup(_cache_key(token), lambda: _lookup(state, token))
    return _decide(request, token, found)


def _env_keys(state: AppState) -> list[str]:
    return [k.strip() for k in state.settings.api_keys.split(",") if k.strip()]


def _env_key(state: AppState, token: str | None) -> Principal | None:
    if token and any(hmac.compare_digest(token.encode(), k.encode()) for k in _env_keys(state)):
        return Principal(tenant=ENV_KEYS_TENANT, admin=True, key_id="env")
    return None


def _cache_key(token: str | None) -> str:
    return api_key_repository.hash_api_key(token) if token else ""


def _lookup(state: AppState, token: str | None) -> tuple[Principal | None, bool]:
    """From the database: the token's active key (None: no such key) and whether any key
    exists (the environment's included)."""
    with state.db.transaction() as session:
        row = api_key_repository.find_active_key(session, token) if token else None
        if row is not None:
            return Principal(tenant=row.tenant, admin=row.admin, key_id=row.id), True
        return None, bool(_env_keys(state)) or api_key_repository.active_keys_exist(session)


def _decide(request: Request, token: str | None, found: tuple[Principal | None, bool]) -> Principal:
    principal, keys_exist = found
    if principal is not None:
        return principal
    if keys_exist:
        if not token:
            raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'", "missing_api_key")
        raise _unauthorized("invalid API key", "invalid_api_key")
    if not is_local_client(request.client.host if request.client else "") or is_forwarded(request):
        raise _unauthorized(
            "no API keys exist, so this server answers requests from its own machine only; "
            "create one there with: ensemblehub keys create --tenant NAME",
            "no_api_keys",
        )
    return OPEN_MODE


# headers a proxy adds; a request that carries one came through a proxy, so from elsewhere
FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")


def is_forwarded(request: Request) -> bool:
    """The open mode answers this machine only and never trusts proxy headers: a request
    relayed by a proxy on this machine (whatever its headers claim) is not local."""
    return any(name in request.headers for name in FORWARDING_HEADERS)


def optional_principal(request: Request) -> Principal | None:
    """Who is asking, or None for a request without a valid key (no 401, no rate limit):
    for the endpoints anyone may call that show more to an admin (``/status``)."""
    state = state_of(request)
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    try:
        return _authenticate(state, request, token or None)
    except ApiError:
        return None
    except Exception:  # noqa: BLE001 - the database is down: /status must still answer
        return None


def is_local_client(host: str) -> bool:
    """A peer on this machine: 127.0.0.0/8, ::1, or IPv4 loopback seen through a dual-stack
    socket (``::ffff:127.0.0.1``). Behind a proxy on this machine uvicorn reports the client
    of ``X-Forwarded-For`` (it trusts that header from 127.0.0.1 only), so proxied traffic from
    elsewhere is not local."""
    host = host.removeprefix("::ffff:")
    return host in LOCAL_CLIENTS or host.startswith("127.")


def open_mode_notice(state: AppState, host: str) -> str | None:
    """The start-up line of a server without keys (None when keys exist)."""
    if state.settings.api_keys.strip():
        return None
    with state.db.transaction() as session:
        if api_key_repository.active_keys_exist(session):
            return None
    notice = (
        "OPEN MODE: no API keys exist, so the API needs no key and answers requests from this "
        "machine (127.0.0.1) only. Create a key with: ensemblehub keys create --tenant NAME [--admin]"
    )
    if host not in ("127.0.0.1", "::1", "localhost"):
        notice += f". Bound to {host}: requests from other machines get 401 until a key exists."
    return notice


class BodySizeLimit:
    """Answer 413 in the OpenAI envelope for bodies above ``limit`` bytes, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await _send_413(send, self.limit)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise ApiError(413, _too_large(self.limit), code="request_too_large")
            return message

        await self.app(scope, counting_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(limit: int) -> str:
    return f"the request body is larger than {limit} bytes; split it (batches: several requests)"


async def _send_413(send: Send, limit: int) -> None:
    body: Any = json.dumps(envelope(413, _too_large(limit), code="request_too_large")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
