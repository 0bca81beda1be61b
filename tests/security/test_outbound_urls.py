"""The outbound-URL policy (ensemble_core.url_policy) on the remote scorer and the openai
engine: an internal address is refused unless allowlisted, with a local listener proving that
no connection was made; redirects are not followed; a server's answer is not echoed back."""

from __future__ import annotations

import pytest

from ensemble_core.backends.openai_remote import OpenAITextGenerator
from ensemble_core.errors import GenerationError, ModelLoadError, ScorerError
from ensemble_core.ports import ScoringRequest
from ensemble_core.scorers.remote import RemoteScorer
from ensemble_core.scorers.specs import RemoteScorerSpec
from ensemble_core.spec import ChatMessage, ModelSpec
from tests.security.listener import listener

ALLOWLIST = "ENSEMBLEHUB_OUTBOUND_ALLOWLIST"


def _score(url: str) -> list[float]:
    scorer = RemoteScorer(RemoteScorerSpec(url=url, retries=2, timeout_s=5))
    request = ScoringRequest([ChatMessage(role="user", content="q")], "", ["ab", "abcd"], ["a", "b"])
    return scorer.score(request)


def _engine(base_url: str) -> OpenAITextGenerator:
    options = {"base_url": base_url, "prompt_format": "raw", "max_retries": 2, "timeout_s": 5}
    return OpenAITextGenerator(ModelSpec(path="m", engine="openai", engine_options=options))


@pytest.fixture()
def no_allowlist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOWLIST, raising=False)


@pytest.mark.usefixtures("no_allowlist")
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_remote_scorer_on_a_local_listener_is_refused(host: str) -> None:
    with listener() as trap:
        with pytest.raises(ScorerError, match="outbound URL policy.*ENSEMBLEHUB_OUTBOUND_ALLOWLIST"):
            _score(trap.url.replace("127.0.0.1", host))
        assert trap.connections == 0


@pytest.mark.usefixtures("no_allowlist")
def test_an_openai_base_url_on_a_local_listener_is_refused() -> None:
    with listener() as trap:
        base = trap.url.removesuffix("/score") + "/v1"
        with pytest.raises(ModelLoadError, match="base_url"):  # a literal address: refused at load
            _engine(base)
        named = _engine(base.replace("127.0.0.1", "localhost"))  # a name: refused at the call
        with pytest.raises(GenerationError, match="outbound URL policy"):
            named.complete({"prompt": "2+2=", "max_tokens": 1})
        assert trap.connections == 0


@pytest.mark.parametrize("scheme", ["file:///etc/passwd", "ftp://example.com/x", "gopher://127.0.0.1:6379/"])
def test_other_schemes_are_refused(scheme: str) -> None:
    with pytest.raises(ScorerError, match="http"):
        _score(scheme)
    with pytest.raises(ModelLoadError):
        _engine(scheme)


def test_a_redirect_to_loopback_is_not_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    # the redirector on 127.0.0.1 is allowlisted; the trap on 127.0.0.2 is not
    monkeypatch.setenv(ALLOWLIST, "127.0.0.1")
    with listener("127.0.0.2") as trap:
        target = trap.url.removesuffix("/score")
        with listener(redirect_to=target + "/score") as hop:
            with pytest.raises(ScorerError, match="redirect"):
                _score(hop.url)
            assert hop.connections == 1, "no retry of a redirect"
        with listener(redirect_to=target + "/v1/completions") as hop:
            engine = _engine(hop.url.removesuffix("/score") + "/v1")
            with pytest.raises(GenerationError, match="redirect"):
                engine.complete({"prompt": "2+2=", "max_tokens": 1})
            assert hop.connections == 1
        assert trap.connections == 0


def test_allowlisted_local_servers_are_called(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOWLIST, "127.0.0.0/8")
    with listener() as server:
        assert _score(server.url.replace("127.0.0.1", "localhost")) == [2.0, 4.0]
        # connected to the vetted address, the name kept in the Host header
        assert server.hosts[-1] == f"localhost:{server.url.split(':')[2].split('/')[0]}"
        engine = _engine(server.url.removesuffix("/score") + "/v1")
        assert engine.complete({"prompt": "2+2=", "max_tokens": 1})["choices"][0]["text"] == "four"
        assert server.connections == 2


def test_the_scorer_error_shows_status_and_latency_not_the_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOWLIST, "127.0.0.1")
    for answer in (b"<html>internal admin page SECRET-1234</html>", b'{"secret": "SECRET-1234"}'):
        with listener(answer=answer) as server:
            with pytest.raises(ScorerError) as info:
                _score(server.url)
        message = str(info.value)
        assert "SECRET-1234" not in message and "HTTP 200 after" in message and " ms" in message
