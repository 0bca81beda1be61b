"""A local HTTP listener that counts every TCP connection made to it.

Attack tests name it as a scorer URL or a ``base_url``: a count of zero after the request
proves the service never connected. It answers POSTs the way a remote scorer does
(``{"scores": [...]}``, one per candidate) so a test can also show an admin's named scorer
is called."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Listener:
    url: str
    connections: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)  # the Host header of each request

    def wait_for_connection(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.connections:
            time.sleep(0.05)


@contextmanager
def listener(
    host: str = "127.0.0.1", *, redirect_to: str | None = None, answer: bytes | None = None
) -> Iterator[Listener]:
    """``redirect_to``: answer 307 to that URL; ``answer``: answer these bytes (200) instead;
    otherwise a scorer's ``{"scores"}``, or a completion on ``.../completions``."""
    holder: dict[str, Listener] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
            holder["l"].bodies.append(body)
            holder["l"].hosts.append(str(self.headers.get("host")))
            if redirect_to is not None:
                self.send_response(307)
                self.send_header("location", redirect_to)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            if answer is not None:
                reply = answer
            elif self.path.endswith("completions"):
                choice = {"text": "four", "finish_reason": "stop", "message": {"content": "four"}}
                reply = json.dumps({"choices": [choice], "usage": {"completion_tokens": 1}}).encode()
            else:
                reply = json.dumps({"scores": [float(len(c)) for c in body.get("candidates", [])]}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        do_GET = do_POST  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    class CountingServer(ThreadingHTTPServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            holder["l"].connections += 1  # every accepted TCP connection, before any byte
            return True

    server = CountingServer((host, 0), Handler)
    holder["l"] = Listener(url=f"http://{host}:{server.server_address[1]}/score")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder["l"]
    finally:
        server.shutdown()
        server.server_close()
