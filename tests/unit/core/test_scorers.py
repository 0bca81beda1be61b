"""Scorers on real (tiny) models and a real local HTTP server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from ensemble_core.errors import ScorerError
from ensemble_core.pool import ModelPool
from ensemble_core.ports import ScoringRequest
from ensemble_core.scorers.remote import RemoteScorer
from ensemble_core.scorers.specs import ProcessRewardScorerSpec, RemoteScorerSpec, RewardModelScorerSpec
from ensemble_core.spec import ChatMessage

MESSAGES = [ChatMessage(role="user", content="What is 2+2?")]


class _Host:
    def __init__(self, pool: ModelPool, reuse: bool) -> None:
        self.pool = pool
        self.members = []
        self.params = type("P", (), {"reuse_cache": reuse})()


def _request(accepted: str, candidates: list[str]) -> ScoringRequest:
    return ScoringRequest(MESSAGES, accepted, candidates, [f"m{i}" for i in range(len(candidates))])


def test_reward_model_prefix_reuse_gives_the_naive_scores(
    pool: ModelPool, tiny_dirs: dict[str, Path]
) -> None:
    from ensemble_core.backends.hf_reward import HFRewardModelScorer

    spec = RewardModelScorerSpec(path=str(tiny_dirs["reward"]))
    reuse, naive = HFRewardModelScorer(spec, _Host(pool, True)), HFRewardModelScorer(spec, _Host(pool, False))
    accepted = ""
    for round_candidates in (["The answer", "It is"], [" is four.", " equals 4.", " four"]):
        got = reuse.score(_request(accepted, round_candidates))
        expected = naive.score(_request(accepted, round_candidates))
        assert got == pytest.approx(expected, abs=1e-4)
        accepted += round_candidates[0]
    # the reference: the model's own forward pass, unsplit
    import torch

    text = reuse.model.render(MESSAGES, "The answer is four.")
    with torch.inference_mode():
        logit = reuse.model.model(input_ids=torch.tensor([reuse.model.encode(text)])).logits[0, 0]
    assert reuse.score(_request("The answer", [" is four."]))[0] == pytest.approx(float(logit), abs=1e-4)
    assert reuse.session.prefilled < naive.session.prefilled


def test_prm_reads_the_good_class_at_each_new_step(pool: ModelPool, tiny_dirs: dict[str, Path]) -> None:
    from ensemble_core.backends.hf_prm import HFProcessRewardScorer

    scorer = HFProcessRewardScorer(ProcessRewardScorerSpec(path=str(tiny_dirs["prm"])), _Host(pool, True))
    scores = scorer.score(_request("Step one.\n", ["Two plus two.\nIs four.", "Four.", "\n"]))
    assert all(0.0 < s < 1.0 for s in scores[:2])
    assert scores[2] != scores[2]  # no step written: NaN, filled with the round mean by the engine
    naive = HFProcessRewardScorer(ProcessRewardScorerSpec(path=str(tiny_dirs["prm"])), _Host(pool, False))
    assert naive.score(_request("Step one.\n", ["Two plus two.\nIs four."]))[0] == pytest.approx(
        scores[0], abs=1e-4
    )


@pytest.fixture(autouse=True)
def _allow_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test servers listen on 127.0.0.1: allowlisted as an admin would (url_policy)."""
    monkeypatch.setenv("ENSEMBLEHUB_OUTBOUND_ALLOWLIST", "127.0.0.1")


class _ScoreHandler(BaseHTTPRequestHandler):
    failures_left = 0
    status = 200

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if _ScoreHandler.failures_left > 0:
            _ScoreHandler.failures_left -= 1
            self.send_response(503)
            self.end_headers()
            return
        payload = {"scores": [float(len(c)) for c in body["candidates"]]}
        self.send_response(_ScoreHandler.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(payload).encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def score_server():  # type: ignore[no-untyped-def]
    server = HTTPServer(("127.0.0.1", 0), _ScoreHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/score"
    server.shutdown()
    server.server_close()


def test_remote_scorer_retries_then_answers(score_server: str) -> None:
    _ScoreHandler.failures_left, _ScoreHandler.status = 1, 200
    scorer = RemoteScorer(RemoteScorerSpec(url=score_server, retries=2, timeout_s=5))
    assert scorer.score(_request("", ["ab", "abcd"])) == [2.0, 4.0]
    assert scorer.calls == 2


def test_remote_scorer_gives_up_with_a_scorer_error(score_server: str) -> None:
    _ScoreHandler.failures_left = 5
    scorer = RemoteScorer(RemoteScorerSpec(url=score_server, retries=1, timeout_s=5))
    with pytest.raises(ScorerError, match="after 2 attempt") as info:
        scorer.score(_request("", ["x"]))
    assert info.value.code == "scorer_failed"
    _ScoreHandler.failures_left = 0


def test_remote_scorer_unreachable() -> None:
    scorer = RemoteScorer(RemoteScorerSpec(url="http://127.0.0.1:9/none", retries=0, timeout_s=1))
    with pytest.raises(ScorerError):
        scorer.score(_request("", ["x"]))


@pytest.mark.slow
def test_minilm_relevance_prefers_the_on_topic_candidate(pool: ModelPool) -> None:
    from ensemble_core.backends.hf_embedding import HFEmbeddingScorer
    from ensemble_core.scorers.specs import EmbeddingScorerSpec

    relevance = HFEmbeddingScorer(EmbeddingScorerSpec(mode="relevance"), _Host(pool, True))
    request = ScoringRequest(
        [ChatMessage(role="user", content="How do plants make food from sunlight?")],
        "",
        ["Plants use photosynthesis to turn light into sugar.", "The stock market fell on Tuesday."],
        ["a", "b"],
    )
    on_topic, off_topic = relevance.score(request)
    assert on_topic > off_topic + 0.2
    agreement = HFEmbeddingScorer(EmbeddingScorerSpec(mode="agreement"), _Host(pool, True))
    votes = agreement.score(
        ScoringRequest(
            MESSAGES,
            "",
            ["Two and two make four.", "2 plus 2 equals four.", "Bananas are yellow."],
            ["a", "b", "c"],
        )
    )
    assert votes[2] < min(votes[:2])
