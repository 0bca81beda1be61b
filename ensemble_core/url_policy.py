"""The outbound-URL policy: where a server-side request may go (SSRF guard).

One policy for every URL the service calls on someone's behalf: webhook deliveries
(``workers.webhook_delivery``), the ``remote`` scorer and the ``openai`` engine's ``base_url``.

- http(s) only, no credentials in the URL, and redirects are never followed;
- the host is resolved once, every address it resolves to is checked, and the connection goes
  to the checked address (the name stays in the Host header and, for https, in SNI and the
  certificate check), so a second DNS answer cannot move it (DNS rebinding);
- loopback, private, link-local, multicast, reserved and other non-global addresses are
  refused, and so are the IPv6 forms that carry or translate to an IPv4 address (IPv4-mapped,
  IPv4-compatible, NAT64, 6to4, Teredo) and the deprecated site-local range;
- unless an admin's allowlist names the host, or networks holding every address it resolves
  to. Webhooks read ``ENSEMBLEHUB_WEBHOOK_ALLOWLIST``; remote scorers and openai engines read
  ``ENSEMBLEHUB_OUTBOUND_ALLOWLIST`` (e.g. ``127.0.0.1`` for a vLLM server on the same host).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

OUTBOUND_ALLOWLIST_ENV = "ENSEMBLEHUB_OUTBOUND_ALLOWLIST"


class URLRefused(ValueError):
    """A URL that must not be called (bad scheme, private address, unresolvable)."""


class Allowlist:
    """Comma-separated hosts or networks an admin allows although they are internal
    (e.g. ``"127.0.0.1,10.0.0.0/8,hooks.internal"``)."""

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

    def allows_address(self, address: IPAddress) -> bool:
        return any(address in net for net in self.networks if net.version == address.version)


def outbound_allowlist() -> Allowlist:
    """The allowlist of remote scorers and openai engines, read when each request is made."""
    return Allowlist.parse(os.environ.get(OUTBOUND_ALLOWLIST_ENV, ""))


# IPv6 forms that carry (or translate to) an IPv4 address, and the deprecated site-local
# range: a public server is never reached this way, and each can lead to an internal host
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


def is_internal(address: IPAddress) -> bool:
    """True for every address a server-side request must not reach without an allowlist."""
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


def check_url(
    url: str,
    allowlist: Allowlist,
    *,
    resolve: bool = True,
    what: str = "url",
    setting: str = OUTBOUND_ALLOWLIST_ENV,
) -> list[IPAddress]:
    """Refuse ``url`` unless it is http(s), without credentials, and its host resolves only to
    public addresses, or the allowlist names the host or networks holding every address.
    Returns the vetted addresses (empty for a host allowlisted by name). ``what`` names the
    URL in the message, ``setting`` the allowlist's setting."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise URLRefused(f"{what} must be an http(s) URL, got scheme {parts.scheme!r}")
    host = parts.hostname
    if not host:
        raise URLRefused(f"{what} has no host")
    if parts.username or parts.password:
        raise URLRefused(f"{what} must not carry credentials (user:password@)")
    if allowlist.allows_host(host):
        return []
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise URLRefused(f"{what} has an invalid port: {exc}") from exc
    addresses = _addresses(host, port) if resolve else _literal(host)
    if not addresses:
        raise URLRefused(f"{what} host {host!r} does not resolve")
    for address in addresses:
        if is_internal(address) and not allowlist.allows_address(address):
            raise URLRefused(
                f"{what} host {host!r} resolves to {address}, a private, loopback or "
                f"link-local address; name it in {setting} to allow it"
            )
    return addresses


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


def pinned_target(url: str, allowlist: Allowlist, **check: Any) -> PinnedTarget:
    """Vet ``url`` (``check_url``) and return it with its host replaced by the vetted address,
    so the connection goes where the check looked. A host allowlisted by name, or a literal
    address, is connected to as it is."""
    addresses = check_url(url, allowlist, **check)
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not addresses or _literal(host):
        return PinnedTarget(url)
    address = addresses[0]
    netloc_host = f"[{address}]" if address.version == 6 else str(address)
    netloc = netloc_host + (f":{parts.port}" if parts.port else "")
    host_header = host + (f":{parts.port}" if parts.port else "")
    return PinnedTarget(urlunsplit(parts._replace(netloc=netloc)), host=host_header)


class PolicyTransport(httpx.BaseTransport):
    """An httpx transport that vets every request's URL and connects to the vetted address.
    ``allowlist`` is called for each request, so a changed setting applies at once."""

    def __init__(self, allowlist: Any = outbound_allowlist, what: str = "url") -> None:
        self._allowlist = allowlist
        self._what = what
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        target = pinned_target(str(request.url), self._allowlist(), what=self._what)
        if target.host is not None:
            request.url = httpx.URL(target.url)
            request.headers["host"] = target.host
            request.extensions = {**request.extensions, "sni_hostname": target.host.split(":")[0]}
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


def guarded_client(*, what: str = "url", allowlist: Any = outbound_allowlist, **options: Any) -> httpx.Client:
    """An ``httpx.Client`` under the policy: every request vetted and pinned, no redirects."""
    return httpx.Client(transport=PolicyTransport(allowlist, what), follow_redirects=False, **options)


def _literal(host: str) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        return []


def _addresses(host: str, port: int) -> list[IPAddress]:
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
