"""The webhook rules without I/O: callback-URL guard, retry schedule with jitter, signatures."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook

from jobqueue.webhook_policy import (
    Allowlist,
    CallbackURLRefused,
    WebhookSettings,
    backoff_delay,
    check_callback_url,
    signed_headers,
)

SECRET = "whsec_ZW5zZW1ibGVodWItdGVzdC13ZWJob29rLWtleS0zMmI="


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://127.5.5.5/hook",
        "http://[::1]/hook",
        "http://[::ffff:10.0.0.1]/hook",
        "http://10.1.2.3/hook",
        "http://172.16.0.9/hook",
        "http://192.168.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]/hook",
        "http://0.0.0.0/hook",
        "http://100.64.0.1/hook",
        "https://[fc00::5]/hook",
    ],
)
def test_non_public_addresses_are_refused(url):
    with pytest.raises(CallbackURLRefused, match="ENSEMBLEHUB_WEBHOOK_ALLOWLIST"):
        check_callback_url(url, Allowlist.parse(""), resolve=False)


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "file:///etc/passwd", "http:///nohost", "gopher://x/"]
)
def test_other_schemes_and_hostless_urls_are_refused(url):
    with pytest.raises(CallbackURLRefused):
        check_callback_url(url, Allowlist.parse(""), resolve=False)


def test_public_literals_pass_and_the_allowlist_opens_hosts_and_networks():
    check_callback_url("https://93.184.215.14/hook", Allowlist.parse(""), resolve=False)
    allow = Allowlist.parse("127.0.0.1, 10.0.0.0/8 ,hooks.internal")
    check_callback_url("http://127.0.0.1:9000/hook", allow, resolve=False)
    check_callback_url("http://10.20.30.40/hook", allow, resolve=False)
    check_callback_url("http://HOOKS.internal./hook", allow, resolve=False)
    with pytest.raises(CallbackURLRefused):
        check_callback_url("http://192.168.1.1/hook", allow, resolve=False)


def test_a_name_resolving_to_loopback_is_refused():
    with pytest.raises(CallbackURLRefused, match="resolves to"):
        check_callback_url("http://localhost:8080/hook", Allowlist.parse(""))


def test_backoff_follows_the_schedule_with_bounded_jitter_then_stops():
    delays = [1.0, 10.0, 100.0]
    rng = random.Random(0)
    for attempt, base in enumerate(delays, start=1):
        values = [backoff_delay(attempt, delays, 0.2, rng) for _ in range(200)]
        assert all(base * 0.8 <= v <= base * 1.2 for v in values)
        assert len(set(values)) > 100, "jitter spreads the retries"
    assert backoff_delay(4, delays, 0.2, rng) is None


def test_signed_headers_verify_with_standard_webhooks():
    body = '{"type":"job.succeeded","data":{"id":"job-1"}}'
    headers = signed_headers(SECRET, "evt_1", body, now=datetime.now(UTC))
    assert headers["webhook-id"] == "evt_1"
    assert Webhook(SECRET).verify(body, headers)["data"]["id"] == "job-1"


def test_settings_reject_a_malformed_secret_or_schedule():
    with pytest.raises(ValidationError, match="whsec_"):
        WebhookSettings(webhook_secret="not-a-secret")
    with pytest.raises(ValidationError, match="at least 16 bytes"):
        WebhookSettings(webhook_secret="whsec_c2hvcnQ=")
    with pytest.raises(ValidationError, match="comma-separated"):
        WebhookSettings(webhook_retry_schedule_s="5,soon")
    assert WebhookSettings(webhook_retry_schedule_s="1, 2,4").retry_delays_s == [1.0, 2.0, 4.0]


@pytest.mark.parametrize(
    "url",
    [
        "http://[2002:a9fe:a9fe::1]/hook",  # 6to4 of 169.254.169.254
        "http://[fec0::1]/hook",  # site-local
        "http://[64:ff9b::a9fe:a9fe]/hook",  # NAT64 of 169.254.169.254
        "http://[64:ff9b:1::1]/hook",  # NAT64, local use
        "http://[2001:0:4136:e378::1]/hook",  # Teredo
        "http://[::ffff:93.184.215.14]/hook",  # IPv4-mapped, even of a public address
        "http://[::10.0.0.1]/hook",  # IPv4-compatible
    ],
)
def test_ipv6_forms_that_embed_or_translate_ipv4_are_refused(url):
    with pytest.raises(CallbackURLRefused, match="ENSEMBLEHUB_WEBHOOK_ALLOWLIST"):
        check_callback_url(url, Allowlist.parse(""), resolve=False)


def test_credentials_in_the_url_are_refused():
    with pytest.raises(CallbackURLRefused, match="credentials"):
        check_callback_url("https://user:pw@93.184.215.14/hook", Allowlist.parse(""), resolve=False)


def test_the_connection_goes_to_the_address_that_was_checked(monkeypatch):
    """Resolve once: a second lookup (DNS rebinding to 127.0.0.1) is never made."""
    import socket

    answers = [[(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", 8080))]]
    answers.append([(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 8080))])
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: answers.pop(0))
    from jobqueue.webhook_policy import pinned_target

    target = pinned_target("https://hooks.example.test:8080/h?x=1", Allowlist.parse(""))
    assert target.url == "https://93.184.215.14:8080/h?x=1"
    assert target.request_options() == {
        "headers": {"host": "hooks.example.test:8080"},
        "extensions": {"sni_hostname": "hooks.example.test"},
    }
    assert len(answers) == 1, "resolved exactly once"
