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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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


# IPv6 forms that carry (or translate to) an IPv4 address, and the deprecated site-local
# range: a public receiver is never reached this way, and each can lead to an internal host
# (2002:a9fe:a9fe:: is 6to4 of 169.254.169.254). Refused unless allowlisted.
TRANSITION_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "::ffff:0:0/96",  # IPv4-mapped
        "::/96",  # IPv4-compatible (deprecated)
        "64:ff9b::/96",  # NAT64, well-known prefix
        "64:ff9b:1::/48",  # NAT64, local use
        "2002::/16",  # 6to4
        "2001::/32",  # Teredo
        "fec0::/10",  # site-local (deprecated)
    )
)


def _is_internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and any(address in n for n in TRANSITION_NETWORKS):
        return True
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


@dataclass(frozen=True)
class PinnedTarget:
    """Where to connect for a vetted URL: the address that was checked, not whatever the name
    resolves to at connect time (DNS rebinding). ``host`` goes in the Host header and, for
    https, in SNI and the certificate check."""

    url: str
    host: str | None = None

    def request_options(self) -> dict[str, Any]:
        if self.host is None:
            return {}
        return {"headers": {"host": self.host}, "extensions": {"sni_hostname": self.host.split(":")[0]}}


def pinned_target(url: str, allowlist: Allowlist) -> PinnedTarget:
    """Vet ``url`` (``check_callback_url``) and return it with its host replaced by the vetted
    address, so the connection goes where the check looked. A host allowlisted by name, or a
    literal address, is connected to as it is."""
    addresses = check_callback_url(url, allowlist)
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not addresses or _literal(host):
        return PinnedTarget(url)
    address = addresses[0]
    netloc_host = f"[{address}]" if address.version == 6 else str(address)
    netloc = netloc_host + (f":{parts.port}" if parts.port else "")
    host_header = host + (f":{parts.port}" if parts.port else "")
    return PinnedTarget(urlunsplit(parts._replace(netloc=netloc)), host=host_header)


def check_callback_url(
    url: str, allowlist: Allowlist, *, resolve: bool = True
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Refuse URLs a server-side request must not reach (SSRF): other schemes, and hosts that
    resolve to private, loopback, link-local or otherwise non-public addresses, unless the
    allowlist names the host or a network holding every address it resolves to. Returns the
    vetted addresses (empty for a host allowlisted by name)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise CallbackURLRefused(f"webhook_url must be an http(s) URL, got scheme {parts.scheme!r}")
    host = parts.hostname
    if not host:
        raise CallbackURLRefused("webhook_url has no host")
    if parts.username or parts.password:
        raise CallbackURLRefused("webhook_url must not carry credentials (user:password@)")
    if allowlist.allows_host(host):
        return []
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
    return addresses


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
