"""Scorers that measure answering, not copying: the copy guard under every shipped scorer, one
scale for models with different tokenizers, PMI, agreement and confidence on fixed numbers."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from ensemble_core.engine import EnsembleJob
from ensemble_core.methods import plan_for
from ensemble_core.pool import ModelPool
from ensemble_core.ports import ScoringRequest
from ensemble_core.scorers import SCORER_TYPES
from ensemble_core.scorers.agreement import AgreementScorer
from ensemble_core.scorers.combined import CombinedScorer, CopyGuard, normalise
from ensemble_core.scorers.confidence import trace_confidence
from ensemble_core.scorers.copy_guard import copied_fraction
from ensemble_core.scorers.likelihood import per_unit
from ensemble_core.scorers.novelty import NoveltyScorer
from ensemble_core.scorers.specs import AgreementScorerSpec, NoveltyScorerSpec, RemoteScorerSpec
from ensemble_core.spec import (
    ChatMessage,
    EnsembleConfig,
    EnsembleSpec,
    GenerationRequest,
    ModelSpec,
    PromptInput,
)
from tests.tiny_sentencepiece import build_tiny_sentencepiece_model


@pytest.fixture(autouse=True)
def _allow_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test servers listen on 127.0.0.1: allowlisted as an admin would (url_policy)."""
    monkeypatch.setenv("ENSEMBLEHUB_OUTBOUND_ALLOWLIST", "127.0.0.1")


QUESTION = 'What is the opposite of "top"? Answer briefly and end your reply with the answer.'
ECHO = 'What is the opposite of "top"? Answer briefly and end your reply with'
ANSWER = "Bottom."


def test_copied_share_counts_long_copies_not_shared_words() -> None:
    assert copied_fraction(ECHO, [QUESTION]) == 1.0
    # restating part of the question while answering is not an echo
    assert copied_fraction("The opposite of top is bottom.", [QUESTION]) == pytest.approx(4 / 6)
    # a one-word answer taken from the question's choices is never a copy
    assert copied_fraction("7", ["Which is larger, 3 or 7?"]) == 0.0
    assert copied_fraction("3 or 7", ["Which is larger, 3 or 7?"]) == 1.0
    guard = CopyGuard()
    assert guard.check("", [QUESTION], "")[1]  # an empty first answer says nothing
    assert not guard.check("", [QUESTION], "Bottom.")[1]  # later, empty + EOS means "done"
    assert guard.check("Bottom is the answer.", [QUESTION], "Bottom is the answer. ")[1]  # repeats itself


def test_center_keeps_the_scale_that_zscore_erases() -> None:
    small, large = [-1.00, -1.01], [-1.0, -9.0]
    assert normalise(small, "zscore") == pytest.approx(normalise(large, "zscore"))  # both +/-1
    assert normalise(small, "center") == pytest.approx([0.005, -0.005])
    assert normalise(large, "center") == pytest.approx([4.0, -4.0])


class _ByLength(BaseHTTPRequestHandler):
    """A remote scorer that likes long candidates (so it prefers the echo)."""

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        payload = json.dumps({"scores": [float(len(c)) for c in body["candidates"]]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def length_server():  # type: ignore[no-untyped-def]
    server = HTTPServer(("127.0.0.1", 0), _ByLength)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/score"
    server.shutdown()
    server.server_close()


def _scorer_configs(tiny_dirs: dict[str, Path], url: str) -> dict[str, list[dict[str, Any]]]:
    return {
        "likelihood": [{"type": "likelihood"}, {"type": "likelihood", "include_own": True}],
        "pmi": [{"type": "pmi"}, {"type": "pmi", "neutral": "question"}],
        "agreement": [{"type": "agreement"}],
        "novelty": [{"type": "novelty"}],
        "confidence": [{"type": "confidence"}],
        "self_certainty": [{"type": "self_certainty"}],
        "reward_model": [{"type": "reward_model", "path": str(tiny_dirs["reward"])}],
        "prm": [{"type": "prm", "path": str(tiny_dirs["prm"])}],
        "remote": [{"type": "remote", "url": url}],
        "embedding": [],  # MiniLM: in the slow test below
    }


def _job(spec: EnsembleSpec, pool: ModelPool, **params: Any) -> EnsembleJob:
    config = EnsembleConfig(ensemble_method="reward_based", aggregation_params=params)
    request = GenerationRequest(messages=[ChatMessage(role="user", content=QUESTION)])
    job = EnsembleJob(spec, config, request, pool, plan_for(config), None)
    job.selected = job.members
    return job


def _echo_round(job: EnsembleJob) -> ScoringRequest:
    """Two echoes (copying is cheap: near-certain tokens, peaked distributions) and one answer."""
    members = job.members
    return ScoringRequest(
        prompt=job.request.prompt_input(),
        accepted_text="",
        candidates=[ECHO, ANSWER, ECHO],
        authors=[members[0].name, members[1].name, members[1].name],
        author_load_keys=[members[0].load_key, members[1].load_key, members[1].load_key],
        author_logprobs=[[-0.01] * 20, [-2.0] * 3, [-0.01] * 20],
        author_confidence=[[15.0] * 20, [3.0] * 3, [15.0] * 20],
        author_self_certainty=[[9.0] * 20, [1.0] * 3, [9.0] * 20],
    )


def _check_echo_loses(job: EnsembleJob, configs: list[dict[str, Any]]) -> None:
    for config in configs:
        scorer = job.build_scorer([config])
        scored = scorer.score_round(_echo_round(job))
        assert scored.vetoed == [True, False, True], config
        assert max(range(3), key=lambda i: scored.combined[i]) == 1, (config, scored)


def test_an_echo_of_the_prompt_loses_under_every_shipped_scorer(
    pool: ModelPool, tiny_spec: EnsembleSpec, tiny_dirs: dict[str, Path], length_server: str
) -> None:
    configs = _scorer_configs(tiny_dirs, length_server)
    assert set(configs) == set(SCORER_TYPES)  # a new scorer type must be added here
    job = _job(tiny_spec, pool)
    try:
        for items in configs.values():
            _check_echo_loses(job, items)
        # the guard is what decides: without it, the echo-loving scorers pick the echo
        unguarded = _job(tiny_spec, pool, copy_threshold=2.0)
        for config in ({"type": "likelihood", "include_own": True}, {"type": "confidence"}):
            scored = unguarded.build_scorer([config]).score_round(_echo_round(unguarded))
            assert max(range(3), key=lambda i: scored.combined[i]) != 1
        unguarded.close()
    finally:
        job.close()


@pytest.mark.slow
def test_an_echo_loses_under_minilm_and_smollm2(pool: ModelPool) -> None:
    spec = EnsembleSpec(
        model_specs=[
            ModelSpec(path="bundled:smollm2", name="careful", temperature=0.3),
            ModelSpec(path="bundled:smollm2", name="bold", temperature=0.9),
        ]
    )
    job = _job(spec, pool)
    try:
        _check_echo_loses(
            job,
            [
                {"type": "embedding", "mode": "relevance"},
                {"type": "embedding", "mode": "agreement"},
                {"type": "pmi"},
                {"type": "likelihood", "include_own": True},
            ],
        )
        # PMI itself (no guard needed): a generic reply gains little from the question
        pmi = job.build_scorer([{"type": "pmi"}])
        request = ScoringRequest(
            job.request.prompt_input(), "", ["Bottom.", "I am not sure."], ["careful", "bold"]
        )
        answer, generic = pmi.score_round(request).raw
        assert answer["pmi"] > generic["pmi"]
    finally:
        job.close()


def test_one_scale_for_different_tokenizers(
    pool: ModelPool, tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The same text has the same per-byte score whatever the tokenizer splits it into; the
    per-token mean of one total differs by the ratio of token counts."""
    piece = build_tiny_sentencepiece_model(tmp_path_factory.mktemp("sp") / "sp")
    spec = EnsembleSpec(
        model_specs=[
            ModelSpec(path=str(tiny_dirs["llama"]), name="bpe"),
            ModelSpec(path=str(piece), name="piece"),
        ]
    )
    job = _job(spec, pool)
    try:
        text = " ten three step"
        counts = [job.session(m).count_tokens(text) for m in job.members]
        assert counts[0] != counts[1]  # the two tokenizers split it differently
        total = -6.0  # the same total log-probability from both authors

        def own_score(i: int, unit: str) -> float:
            member = job.members[i]
            request = ScoringRequest(
                job.request.prompt_input(),
                "",
                [text],
                [member.name],
                [member.load_key],
                [[total / counts[i]] * counts[i]],
            )
            config = {"type": "likelihood", "include_own": True, "models": [member.name], "unit": unit}
            return job.build_scorer([config]).score_round(request).raw[0]["likelihood"]

        by_byte = [own_score(0, "byte"), own_score(1, "byte")]
        assert by_byte[0] == pytest.approx(by_byte[1]) == pytest.approx(total / len(text.encode()))
        by_token = [own_score(0, "token"), own_score(1, "token")]
        assert by_token[0] / by_token[1] == pytest.approx(counts[1] / counts[0])
        request = ScoringRequest(
            job.request.prompt_input(), "", [text, text], ["bpe", "piece"], [m.load_key for m in job.members]
        )
        # cross-model scores are per byte too: each model's total over the other's text
        cross = job.build_scorer([{"type": "likelihood"}]).score_round(request).raw
        for row, scorer in zip(cross, reversed(job.members), strict=True):
            got = job.session(scorer).score_continuations("", [text])[0]
            assert row["likelihood"] == pytest.approx(got.mean_logprob * got.tokens / len(text.encode()))
    finally:
        job.close()


def test_an_empty_candidate_costs_the_likelihood_scorer_no_forward_pass(
    pool: ModelPool, tiny_spec: EnsembleSpec
) -> None:
    """An answer that ended at once has no token to score: it stays neutral (the round's
    mean), as a forward pass over nothing would leave it, and no scorer model runs for it."""
    job = _job(tiny_spec, pool)
    try:
        a, b = job.members[0], job.members[1]
        request = ScoringRequest(
            job.request.prompt_input(),
            "",
            ["", " ten three", ""],
            [a.name, a.name, b.name],
            [a.session_key, a.session_key, b.session_key],
            [[], [-1.0, -2.0], []],
        )
        scored: list[int] = []
        for member in (a, b):
            session = job.session(member)
            real = session.score_continuations

            def counting(accepted: str, texts: list[str], real: Any = real) -> Any:
                scored.extend(len(t) for t in texts)
                return real(accepted, texts)

            session.score_continuations = counting  # type: ignore[method-assign]
        own = job.build_scorer([{"type": "likelihood", "include_own": True, "include_others": False}])
        raw = [row["likelihood"] for row in own.score_round(request).raw]
        assert scored == [] and raw[0] == raw[2] == raw[1]  # the neutral fill: the one finite value
        job.build_scorer([{"type": "likelihood"}]).score_round(request)  # cross-model
        assert scored == [len(" ten three")]  # b scores a's real candidate, nobody the empty ones
    finally:
        job.close()


def test_pmi_is_the_conditional_minus_the_neutral_likelihood(
    pool: ModelPool, tiny_spec: EnsembleSpec
) -> None:
    job = _job(tiny_spec, pool)
    try:
        candidates = [" four", " ten three"]
        request = ScoringRequest(job.request.prompt_input(), "", candidates, ["x", "y"])
        raw = job.build_scorer([{"type": "pmi"}]).score_round(request).raw
        for i, text in enumerate(candidates):
            expected = []
            for member in job.members:
                cond = job.session(member).score_continuations("", [text])[0]
                neutral = pool.generator(member.spec).open_session(
                    PromptInput.chat([ChatMessage(role="user", content="Answer:")]), seed=0
                )
                uncond = neutral.score_continuations("", [text])[0]
                neutral.close()
                delta = cond.mean_logprob * cond.tokens - uncond.mean_logprob * uncond.tokens
                expected.append(per_unit(delta, cond.tokens, text, "byte"))
            assert raw[i]["pmi"] == pytest.approx(sum(expected) / len(expected), abs=1e-4)
    finally:
        job.close()


def test_pmi_question_mode_keeps_the_few_shot_turns(pool: ModelPool, tiny_spec: EnsembleSpec) -> None:
    turns = [
        ChatMessage(role="user", content="Capital of France?"),
        ChatMessage(role="assistant", content="Paris"),
        ChatMessage(role="user", content=QUESTION),
    ]
    config = EnsembleConfig(ensemble_method="reward_based")
    request = GenerationRequest(messages=turns)
    job = EnsembleJob(tiny_spec, config, request, pool, plan_for(config), None)
    job.selected = job.members
    try:
        text = " four"
        scoring = ScoringRequest(request.prompt_input(), "", [text], ["x"])
        raw = job.build_scorer([{"type": "pmi", "neutral": "question"}]).score_round(scoring).raw
        expected = []
        for member in job.members:
            cond = job.session(member).score_continuations("", [text])[0]
            neutral_turns = [*turns[:2], ChatMessage(role="user", content="Answer:")]
            neutral = pool.generator(member.spec).open_session(PromptInput.chat(neutral_turns), seed=0)
            uncond = neutral.score_continuations("", [text])[0]
            neutral.close()
            delta = cond.mean_logprob * cond.tokens - uncond.mean_logprob * uncond.tokens
            expected.append(per_unit(delta, cond.tokens, text, "byte"))
        assert raw[0]["pmi"] == pytest.approx(sum(expected) / len(expected), abs=1e-4)
    finally:
        job.close()


def test_novelty_marks_answers_that_only_repeat_the_question() -> None:
    turns = [
        ChatMessage(role="user", content="What is the capital of Spain?"),
        ChatMessage(role="assistant", content="Madrid"),
        ChatMessage(role="user", content="What is the capital of Poland?"),
    ]
    candidates = ["Poland", "Warsaw", "The Poland.", "", "Madrid"]
    scores = NoveltyScorer(NoveltyScorerSpec()).score(ScoringRequest(turns, "", candidates, ["a"] * 5))
    # only the last user turn is the question: "Madrid" (from an example) is something new
    assert scores == [0.0, 1.0, 0.0, 0.0, 1.0]
    # when every candidate copies (option letters), centring leaves the scorer neutral
    letters = ScoringRequest(PromptInput.raw("Which? A) cat B) dog"), "", ["B", "A"], ["a", "b"])
    assert NoveltyScorer(NoveltyScorerSpec()).score(letters) == [0.0, 0.0]


def test_agreement_counts_matching_answers_and_shared_words() -> None:
    request = ScoringRequest(
        [ChatMessage(role="user", content="2+3?")],
        "",
        ["The answer is 5.", "5", "It is 7.", "five apples"],
        ["a", "b", "c", "a"],
    )
    scores = AgreementScorer(AgreementScorerSpec()).score(request)
    assert scores[0] == pytest.approx(1 / 3) and scores[1] == pytest.approx(1 / 3)
    assert scores[2] == 0.0
    own = AgreementScorer(AgreementScorerSpec(other_authors_only=True)).score(request)
    assert own[0] == pytest.approx(1 / 2)  # "five apples" is the author's own: not counted
    words = AgreementScorer(AgreementScorerSpec(mode="words")).score(
        ScoringRequest(PromptInput.raw(""), "", ["red apple", "red pear", "blue sky"], ["a", "b", "c"])
    )
    assert words == [pytest.approx(0.25), pytest.approx(0.25), 0.0]


def test_trace_confidence_is_the_weakest_window() -> None:
    steady = [5.0] * 8
    dip = [5.0, 5.0, 5.0, 0.5, 0.5, 5.0, 5.0, 5.0]
    assert trace_confidence(steady, window=2) == 5.0
    assert trace_confidence(dip, window=2) == pytest.approx(0.5)
    assert trace_confidence(dip, window=2, reduce="mean") == pytest.approx(sum(dip) / 8)
    assert trace_confidence(dip, window=2, reduce="tail") == 5.0
    assert trace_confidence(dip, window=16) == pytest.approx(sum(dip) / 8)  # shorter than a window
    assert math.isnan(trace_confidence([]))


def test_an_echo_wins_only_when_every_candidate_is_one() -> None:
    class _Fixed:
        name = "fixed"

        def score(self, request: ScoringRequest) -> list[float]:
            return [2.0, 1.0]

    scorer = CombinedScorer([(RemoteScorerSpec(url="x"), _Fixed())], "center")
    request = ScoringRequest(
        [ChatMessage(role="user", content=QUESTION)], "", [ECHO, ECHO + " top"], ["a", "b"]
    )
    scored = scorer.score_round(request)
    assert scored.vetoed == [True, True] and scored.combined[0] > scored.combined[1]
