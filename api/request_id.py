"""``x-request-id`` on every answer: the client's own (echoed, so it can match its logs to
ours) or a new one; also the logging context of everything the request logs."""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
# what a client may send: short and printable (it is echoed into a header and into logs)
_ACCEPTABLE = re.compile(rb"^[A-Za-z0-9._:/+=@-]{1,128}$")


class RequestId:
    """ASGI middleware; the id is also in ``scope["state"]["request_id"]`` for handlers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope.get("headers") or []).get(HEADER)
        request_id = sent if sent and _ACCEPTABLE.match(sent) else uuid.uuid4().hex.encode()
        scope.setdefault("state", {})["request_id"] = request_id.decode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != HEADER]
                message["headers"] = [*headers, (HEADER, request_id)]
            await send(message)

        await self.app(scope, receive, send_with_id)
