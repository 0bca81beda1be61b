"""A real local HTTP server that receives webhooks, answering with scripted status codes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    answered: int


@dataclass
class WebhookReceiver:
    url: str
    # status codes for the next requests, in order; 200 once they run out
    script: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    # the first this many requests are recorded, then held without an answer until the
    # receiver is closed (a receiver that hangs: the sender waits in the middle of its POST)
    hang_first: int = 0
    release: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def next_status(self) -> int:
        with self._lock:
            return self.script.pop(0) if self.script else 200

    def wait_for(self, count: int, timeout: float = 60) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.received) >= count:
                return list(self.received)
            time.sleep(0.05)
        raise TimeoutError(f"{len(self.received)} webhook requests arrived, expected {count}")


@contextmanager
def webhook_receiver(
    script: list[int] | None = None, port: int = 0, hang_first: int = 0
) -> Iterator[WebhookReceiver]:
    holder: dict[str, WebhookReceiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            receiver = holder["receiver"]
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with receiver._lock:
                hang = len(receiver.received) < receiver.hang_first
            if hang:
                receiver.received.append(Received({k.lower(): v for k, v in self.headers.items()}, body, 0))
                receiver.release.wait()
                self.close_connection = True
                return
            status = receiver.next_status()
            receiver.received.append(Received({k.lower(): v for k, v in self.headers.items()}, body, status))
            self.send_response(status)
            self.send_header("content-type", "text/plain")
            self.end_headers()
            self.wfile.write(b"ok" if status < 300 else b"try again")

        def log_message(self, *_args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    holder["receiver"] = WebhookReceiver(
        url=f"http://127.0.0.1:{server.server_address[1]}/hooks/ensemble",
        script=list(script or []),
        hang_first=hang_first,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield holder["receiver"]
    finally:
        holder["receiver"].release.set()
        server.shutdown()
        server.server_close()
