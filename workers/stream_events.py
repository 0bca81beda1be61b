"""A job's streamed text, coalesced before it goes to Redis.

Token-by-token streaming would publish one message per decoded token. The coalescer sends a
partial event at once when the last one went out at least ``interval_s`` ago (so a slow
decode still streams every token), and otherwise appends it to a buffer that goes out with
the next event past the interval, the segment's accept event, a change of writer, or the
end of the choice. At most about 1 / ``interval_s`` messages a second per job, whatever the
decode speed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ensemble_core.result import SegmentEvent

DEFAULT_INTERVAL_S = 0.03


class SegmentCoalescer:
    """``on_segment`` for one choice; thread-safe (a shared decode batch may call it)."""

    def __init__(
        self, publish: Callable[[dict[str, Any]], None], index: int, interval_s: float = DEFAULT_INTERVAL_S
    ) -> None:
        self.publish, self.index, self.interval_s = publish, index, interval_s
        self.lock = threading.Lock()
        self.buffer: list[str] = []
        self.key: tuple[int, str] | None = None
        self.last = 0.0
        self.published = 0  # messages sent (for tests and logs)

    def __call__(self, event: SegmentEvent) -> None:
        with self.lock:
            key = (event.round, event.model)
            if self.buffer and key != self.key:
                self._flush()
            self.key = key
            self.buffer.append(event.text)
            if not event.partial or time.monotonic() - self.last >= self.interval_s:
                self._flush()

    def close(self) -> None:
        with self.lock:
            self._flush()

    def _flush(self) -> None:
        if not self.buffer or self.key is None:
            return
        # as the stored result has it: Postgres cannot hold U+0000
        text = "".join(self.buffer).replace("\x00", "\ufffd")
        self.buffer = []
        self.last = time.monotonic()
        self.published += 1
        self.publish(
            {"type": "segment", "index": self.index, "round": self.key[0], "model": self.key[1], "text": text}
        )
