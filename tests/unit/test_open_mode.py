"""Which peers the open (keyless) mode answers: this machine only."""

from __future__ import annotations

import pytest

from api.guards import is_local_client


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.1.1", "::1", "::ffff:127.0.0.1", "localhost", "testclient"]
)
def test_local_peers(host):
    assert is_local_client(host)


@pytest.mark.parametrize(
    "host", ["", "10.0.0.5", "192.168.1.2", "::ffff:10.0.0.5", "2001:db8::1", "128.0.0.1"]
)
def test_other_peers(host):
    assert not is_local_client(host)
