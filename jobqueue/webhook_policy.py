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
import ipaddress
import random
import socket
from datetime import UTC, datetime
from urllib.parse import urlsplit

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from standardwebhooks.webhooks import Webhook

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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


class CallbackURLRefused(ValueError):
    """A callback URL that must not be called (bad scheme, private address, unresolvable)."""


class Allowlist:
    def __init__(self, hosts: set[str], networks: list[IPNetwork]) -> None:
        self.hosts, self.networks = hosts, networks

    @classmethod
    def parse(cls, text: str) -> Allowlist:
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in (e.strip() for e in text.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(hosts, networks)

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in net for net in self.networks if net.version == address.version)


def _is_internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def check_callback_url(url: str, allowlist: Allowlist, *, resolve: bool = True) -> None:
    """Refuse URLs a server-side request must not reach (SSRF): other schemes, and hosts that
    resolve to private, loopback, link-local or otherwise non-public addresses, unless the
    allowlist names the host or a network holding every address it resolves to."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise CallbackURLRefused(f"webhook_url must be an http(s) URL, got scheme {parts.scheme!r}")
    host = parts.hostname
    if not host:
        raise CallbackURLRefused("webhook_url has no host")
    if allowlist.allows_host(host):
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise CallbackURLRefused(f"webhook_url has an invalid port: {exc}") from exc
    addresses = _addresses(host, port) if resolve else _literal(host)
    if not addresses:
        raise CallbackURLRefused(f"webhook_url host {host!r} does not resolve")
    for address in addresses:
        if _is_internal(address) and not allowlist.allows_address(address):
            raise CallbackURLRefused(
                f"webhook_url host {host!r} resolves to {address}, a private, loopback or "
                "link-local address; name it in ENSEMBLEHUB_WEBHOOK_ALLOWLIST to allow it"
            )


def _literal(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        return []


def _addresses(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    literal = _literal(host)
    if literal:
        return literal
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    found = []
    for info in infos:
        try:
            found.append(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))
        except ValueError:
            continue
    return found


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
