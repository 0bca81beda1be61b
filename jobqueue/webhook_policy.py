"""Webhook rules shared by the API (which accepts callback URLs) and the workers (which
deliver): the signing secret, the callback-URL guard, the retry schedule, the signature.

Signing follows the Standard Webhooks scheme (https://www.standardwebhooks.com): headers
``webhook-id`` (the event id, the same on every retry), ``webhook-timestamp`` (seconds) and
``webhook-signature`` (``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``), so receivers verify
with the ``standardwebhooks`` library or OpenAI's ``client.webhooks.unwrap``.
"""

from __future__ import annotations

import base64
import binascii
import random
from datetime import UTC, datetime

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from standardwebhooks.webhooks import Webhook

from ensemble_core.url_policy import (
    TRANSITION_NETWORKS,
    Allowlist,
    IPAddress,
    PinnedTarget,
    URLRefused,
    check_url,
    is_internal,
)
from ensemble_core.url_policy import pinned_target as _pinned_target

__all__ = [
    "TRANSITION_NETWORKS",
    "Allowlist",
    "CallbackURLRefused",
    "PinnedTarget",
    "WebhookSettings",
    "check_callback_url",
    "pinned_target",
    "signed_headers",
]


class WebhookSettings(BaseSettings):
    """``ENSEMBLEHUB_WEBHOOK_*`` settings, read by the API and by the workers."""

    model_config = SettingsConfigDict(env_prefix="ENSEMBLEHUB_", extra="ignore")

    # "whsec_" + base64 of the key; without it, requests that name a webhook_url are refused
    webhook_secret: str | None = None
    # comma-separated hosts or networks that may receive callbacks although they are private
    # (e.g. "127.0.0.1,10.0.0.0/8,hooks.internal")
    webhook_allowlist: str = ""
    # seconds to wait before each retry; len(schedule) retries after the first attempt
    webhook_retry_schedule_s: str = "5,30,120,600,1800,7200"
    # each delay is multiplied by a random factor in [1 - jitter, 1 + jitter]
    webhook_retry_jitter: float = 0.2
    webhook_timeout_s: float = 10.0

    @field_validator("webhook_secret")
    @classmethod
    def _secret_format(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith("whsec_"):
            raise ValueError("ENSEMBLEHUB_WEBHOOK_SECRET must look like whsec_<base64 key>")
        try:
            key = base64.b64decode(value.removeprefix("whsec_") + "==", validate=False)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("ENSEMBLEHUB_WEBHOOK_SECRET: the part after whsec_ must be base64") from exc
        if len(key) < 16:
            raise ValueError("ENSEMBLEHUB_WEBHOOK_SECRET: the key must be at least 16 bytes")
        return value

    @field_validator("webhook_retry_schedule_s")
    @classmethod
    def _schedule_format(cls, value: str) -> str:
        retry_delays(value)
        return value

    @property
    def retry_delays_s(self) -> list[float]:
        return retry_delays(self.webhook_retry_schedule_s)

    @property
    def allowlist(self) -> Allowlist:
        return Allowlist.parse(self.webhook_allowlist)


def retry_delays(schedule: str) -> list[float]:
    try:
        delays = [float(part) for part in schedule.split(",") if part.strip()]
    except ValueError as exc:
        raise ValueError(f"retry schedule must be comma-separated seconds, got {schedule!r}") from exc
    if any(d < 0 for d in delays):
        raise ValueError("retry delays must not be negative")
    return delays


def backoff_delay(
    failed_attempt: int, delays: list[float], jitter: float, rng: random.Random | None = None
) -> float | None:
    """Seconds to wait before the attempt after ``failed_attempt`` (1-based), or None when the
    schedule is spent. The schedule itself grows (exponential by default); the jitter spreads
    retries of many events that failed together."""
    if failed_attempt > len(delays):
        return None
    factor = 1.0 + (rng or random).uniform(-jitter, jitter)
    return max(0.0, delays[failed_attempt - 1] * factor)


# ---------------------------------------------------------------- callback URL guard
# The policy itself is ensemble_core.url_policy, shared with remote scorers and openai engines.

CallbackURLRefused = URLRefused
_is_internal = is_internal


def check_callback_url(url: str, allowlist: Allowlist, *, resolve: bool = True) -> list[IPAddress]:
    """``url_policy.check_url`` for a ``webhook_url`` and ``ENSEMBLEHUB_WEBHOOK_ALLOWLIST``."""
    return check_url(url, allowlist, resolve=resolve, what="webhook_url", setting=_SETTING)


def pinned_target(url: str, allowlist: Allowlist) -> PinnedTarget:
    """``url_policy.pinned_target`` for a ``webhook_url``: the URL with its host replaced by
    the vetted address, the name kept for the Host header and SNI."""
    return _pinned_target(url, allowlist, what="webhook_url", setting=_SETTING)


_SETTING = "ENSEMBLEHUB_WEBHOOK_ALLOWLIST"


# ---------------------------------------------------------------- signing


def signed_headers(secret: str, event_id: str, body: str, *, now: datetime | None = None) -> dict[str, str]:
    timestamp = (now or datetime.now(UTC)).replace(microsecond=0)
    signature = Webhook(secret).sign(msg_id=event_id, timestamp=timestamp, data=body)
    return {
        "content-type": "application/json",
        "user-agent": "Ensemble-Hub-Webhooks/1.0",
        "webhook-id": event_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signature,
    }
