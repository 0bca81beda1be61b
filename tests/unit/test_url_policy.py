"""The address classification of the outbound-URL policy, shared by webhooks, remote scorers
and openai engines (one function, so the three cannot drift apart)."""

from __future__ import annotations

import ipaddress

import pytest

from ensemble_core import url_policy
from ensemble_core.url_policy import Allowlist, URLRefused, check_url, is_internal, pinned_target
from jobqueue import webhook_policy

INTERNAL = [
    "127.0.0.1",
    "127.8.9.10",
    "::1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # link-local (cloud metadata)
    "fe80::1",
    "fc00::1",  # unique local
    "fec0::1",  # site-local (deprecated)
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # IPv4-compatible
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b:1::1",  # NAT64, local use
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2002:808:808::1",  # 6to4 of a public address: still refused
    "2001:0:4136:e378::1",  # Teredo
    "0.0.0.0",
    "::",
    "100.64.0.1",  # carrier-grade NAT
    "224.0.0.1",
    "240.0.0.1",
]
PUBLIC = ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e"]


@pytest.mark.parametrize("address", INTERNAL)
def test_internal_addresses(address: str) -> None:
    assert is_internal(ipaddress.ip_address(address))
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(URLRefused, match="ENSEMBLEHUB_OUTBOUND_ALLOWLIST"):
        check_url(f"http://{host}:8000/v1", Allowlist.parse(""), resolve=False)
    with pytest.raises(webhook_policy.CallbackURLRefused, match="ENSEMBLEHUB_WEBHOOK_ALLOWLIST"):
        webhook_policy.check_callback_url(f"http://{host}/hook", Allowlist.parse(""), resolve=False)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses(address: str) -> None:
    assert not is_internal(ipaddress.ip_address(address))
    host = f"[{address}]" if ":" in address else address
    assert check_url(f"https://{host}/score", Allowlist.parse(""), resolve=False)


def test_the_webhooks_use_the_shared_policy() -> None:
    assert webhook_policy.Allowlist is url_policy.Allowlist
    assert webhook_policy.TRANSITION_NETWORKS is url_policy.TRANSITION_NETWORKS
    assert webhook_policy.CallbackURLRefused is url_policy.URLRefused


def test_an_allowlist_names_hosts_or_networks() -> None:
    allow = Allowlist.parse("127.0.0.1, 10.0.0.0/8, vllm.internal.")
    assert check_url("http://127.0.0.1:8000/v1", allow, resolve=False)
    assert check_url("http://10.9.8.7/v1", allow, resolve=False)
    assert check_url("http://VLLM.internal/v1", allow) == []  # by name: not resolved
    with pytest.raises(URLRefused):
        check_url("http://127.0.0.2/v1", allow, resolve=False)
    with pytest.raises(URLRefused, match="resolves to"):  # resolved, then refused
        check_url("http://localhost:8000/v1", Allowlist.parse(""))


def test_a_resolved_name_is_pinned_to_the_vetted_address() -> None:
    target = pinned_target("https://localhost:8443/v1?x=1", Allowlist.parse("127.0.0.0/8,::1"))
    assert target.url in ("https://127.0.0.1:8443/v1?x=1", "https://[::1]:8443/v1?x=1")
    assert target.request_options() == {
        "headers": {"host": "localhost:8443"},
        "extensions": {"sni_hostname": "localhost"},
    }


def test_the_allowlist_setting_is_read_at_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENSEMBLEHUB_OUTBOUND_ALLOWLIST", "10.0.0.0/8")
    assert url_policy.outbound_allowlist().allows_address(ipaddress.ip_address("10.1.1.1"))
    monkeypatch.delenv("ENSEMBLEHUB_OUTBOUND_ALLOWLIST")
    assert not url_policy.outbound_allowlist().networks
