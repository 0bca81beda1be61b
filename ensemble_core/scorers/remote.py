"""Remote HTTP scorer: any service that scores candidates, behind one small JSON contract.

Request (POST, ``Content-Type: application/json``)::

    {"messages": [{"role", "content"}...], "accepted_text": str,
     "candidates": [str...], "authors": [str...]}

Response: ``{"scores": [float...]}``, one per candidate, higher is better.
Each call is retried ``retries`` times (exponential backoff from 0.2 s) on connection errors,
timeouts, 5xx and 429; any other failure, or a malformed answer, raises ``ScorerError``.
Uses only the standard library (``urllib.request``).
Cost: one HTTP round trip per round.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from ensemble_core.errors import ScorerError
from ensemble_core.ports import ScoringRequest
from ensemble_core.scorers.specs import RemoteScorerSpec

_RETRY_STATUS = {429, 500, 502, 503, 504}


class RemoteScorer:
    name = "remote"

    def __init__(self, spec: RemoteScorerSpec, host: Any = None) -> None:
        self.spec = spec
        self.calls = 0

    def _post(self, body: bytes) -> Any:
        headers = {"Content-Type": "application/json", **self.spec.headers}
        request = urllib.request.Request(self.spec.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.spec.timeout_s) as response:
            return json.loads(response.read().decode("utf-8"))

    def score(self, request: ScoringRequest) -> list[float]:
        body = json.dumps(
            {
                "messages": [{"role": m.role, "content": m.content} for m in request.messages],
                "accepted_text": request.accepted_text,
                "candidates": request.candidates,
                "authors": request.authors,
            }
        ).encode("utf-8")
        last_error = "no attempt"
        for attempt in range(self.spec.retries + 1):
            if attempt:
                time.sleep(0.2 * 2 ** (attempt - 1))
            self.calls += 1
            try:
                payload = self._post(body)
            except urllib.error.HTTPError as exc:
                last_error = f"HTTP {exc.code}"
                if exc.code not in _RETRY_STATUS:
                    break
                continue
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                continue
            except json.JSONDecodeError as exc:
                raise ScorerError(f"remote scorer {self.spec.url} answered non-JSON: {exc}") from exc
            return self._parse(payload, len(request.candidates))
        raise ScorerError(
            f"remote scorer {self.spec.url} failed after {self.spec.retries + 1} attempt(s): {last_error}"
        )

    def _parse(self, payload: Any, expected: int) -> list[float]:
        scores = payload.get("scores") if isinstance(payload, dict) else None
        if not isinstance(scores, list) or len(scores) != expected:
            raise ScorerError(
                f'remote scorer {self.spec.url} must answer {{"scores": [{expected} numbers]}}, got {payload!r:.200}'
            )
        try:
            return [float(s) for s in scores]
        except (TypeError, ValueError) as exc:
            raise ScorerError(f"remote scorer {self.spec.url} returned a non-number score") from exc
