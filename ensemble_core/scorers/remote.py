"""Remote HTTP scorer: any service that scores candidates, behind one small JSON contract.

Request (POST, ``Content-Type: application/json``)::

    {"messages": [{"role", "content"}...], "accepted_text": str,
     "candidates": [str...], "authors": [str...]}

Response: ``{"scores": [float...]}``, one per candidate, higher is better.
Each call is retried ``retries`` times (exponential backoff from 0.2 s) on connection errors,
timeouts, 5xx and 429; any other failure, or a malformed answer, raises ``ScorerError``.
The URL is under the outbound policy (``ensemble_core.url_policy``): http(s) only, resolved
once and connected to the vetted address, no redirects, no internal address unless
``ENSEMBLEHUB_OUTBOUND_ALLOWLIST`` names it. An error names the status and latency, never the
server's answer (it may end up in a tenant's job error).
Cost: one HTTP round trip per round.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from ensemble_core.errors import ScorerError
from ensemble_core.ports import ScoringRequest
from ensemble_core.scorers.specs import RemoteScorerSpec
from ensemble_core.url_policy import URLRefused, guarded_client

_RETRY_STATUS = {429, 500, 502, 503, 504}


class RemoteScorer:
    name = "remote"

    def __init__(self, spec: RemoteScorerSpec, host: Any = None) -> None:
        self.spec = spec
        self.calls = 0

    def _post(self, body: bytes) -> httpx.Response:
        headers = {"Content-Type": "application/json", **self.spec.headers}
        with guarded_client(what="remote scorer url", timeout=self.spec.timeout_s) as client:
            return client.post(self.spec.url, content=body, headers=headers)

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
            started = time.perf_counter()
            try:
                response = self._post(body)
            except URLRefused as exc:
                raise ScorerError(f"remote scorer refused by the outbound URL policy: {exc}") from exc
            except httpx.HTTPError as exc:
                last_error = f"{type(exc).__name__} after {_ms(started)} ms"
                continue
            status = f"HTTP {response.status_code} after {_ms(started)} ms"
            if response.status_code in _RETRY_STATUS:
                last_error = status
                continue
            if 300 <= response.status_code < 400:
                raise ScorerError(
                    f"remote scorer {self.spec.url} redirected ({status}); redirects are not followed"
                )
            if response.status_code >= 400:
                last_error = status
                break
            try:
                payload = response.json()
            except ValueError as exc:
                raise ScorerError(f"remote scorer {self.spec.url} answered non-JSON ({status})") from exc
            return self._parse(payload, len(request.candidates), status)
        raise ScorerError(
            f"remote scorer {self.spec.url} failed after {self.spec.retries + 1} attempt(s): {last_error}"
        )

    def _parse(self, payload: Any, expected: int, status: str) -> list[float]:
        scores = payload.get("scores") if isinstance(payload, dict) else None
        if not isinstance(scores, list) or len(scores) != expected:
            # the answer itself is not shown: it could be an internal page read back
            raise ScorerError(
                f'remote scorer {self.spec.url} must answer {{"scores": [{expected} numbers]}} ({status})'
            )
        try:
            return [float(s) for s in scores]
        except (TypeError, ValueError) as exc:
            raise ScorerError(f"remote scorer {self.spec.url} returned a non-number score") from exc


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
