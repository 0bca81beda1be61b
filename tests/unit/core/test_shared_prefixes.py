"""Prompt key/values shared across jobs on one model (``shared_prefixes``): the store keeps the
longest prefixes within its budget, and a job whose prompt shares a prefix with an earlier job's
prefills only the rest, with the same candidates as a model that shares nothing (directly and
through the decode loop)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from ensemble_core.backends.hf import HFGenerationSession, HFTextGenerator
from ensemble_core.backends.shared_prefixes import SharedPrefixes
from ensemble_core.errors import ModelLoadError
from ensemble_core.ports import Candidate, Sampling, SegmentLimits
from ensemble_core.spec import ChatMessage, ModelSpec, PromptInput

LIMITS = SegmentLimits(max_new_tokens=8, boundary="none")
SAMPLINGS = [Sampling(0.0), Sampling(0.9, 0.95)]
SYSTEM = "You answer questions about counting with short and careful answers, always."


def _layers(length: int, fill: float = 0.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two layers of one row, ``length`` columns; column i holds i (+ ``fill``)."""
    column = torch.arange(length, dtype=torch.float32).view(1, 1, length, 1) + fill
    return [(column.clone(), column.clone() + 0.5) for _ in range(2)]


def _bytes(length: int) -> int:
    return 2 * 2 * length * 4  # two layers, keys and values, float32


# -- the store ---------------------------------------------------------------------------------
def test_lookup_returns_the_longest_shared_prefix_within_the_limit() -> None:
    store = SharedPrefixes(max_bytes=10**6, min_tokens=3)
    store.publish(list(range(10)), _layers(10))
    store.publish([0, 1, 2, 3, 9, 9, 9], _layers(7, fill=100))
    found = store.lookup([0, 1, 2, 3, 4, 5, 6, 77], limit=100)
    assert found is not None
    ids, layers = found
    assert ids == [0, 1, 2, 3, 4, 5, 6]
    assert layers[0][0].shape == (1, 1, 7, 1) and layers[0][0].flatten().tolist() == list(range(7))
    ids, _ = store.lookup(list(range(10)), limit=9) or ([], [])
    assert ids == list(range(9))  # a prompt cached whole still feeds its last token
    assert store.lookup([5, 6, 7], limit=3) is None
    assert store.lookup([0, 1, 7], limit=3) is None  # two shared tokens: below min_tokens
    assert store.hits == 2 and store.reused_tokens == 16


def test_published_key_values_are_copies_of_the_prompt_columns_only() -> None:
    store = SharedPrefixes(max_bytes=10**6, min_tokens=2)
    layers = _layers(12)
    store.publish([1, 2, 3, 4], layers)
    layers[0][0].zero_()
    assert store.bytes == _bytes(4)
    _, found = store.lookup([1, 2, 3, 4, 5], limit=5) or ([], [])
    assert found[0][0].flatten().tolist() == [0, 1, 2, 3]


def test_an_extending_prompt_replaces_its_prefix_and_a_covered_one_adds_nothing() -> None:
    store = SharedPrefixes(max_bytes=10**6, min_tokens=2)
    store.publish([1, 2, 3], _layers(3))
    store.publish([1, 2, 3, 4, 5], _layers(5))
    assert store.entries == 1 and store.bytes == _bytes(5)
    store.publish([1, 2, 3, 4], _layers(4))
    assert store.entries == 1 and store.bytes == _bytes(5)


def test_the_least_recently_used_entries_go_first_past_the_budget() -> None:
    store = SharedPrefixes(max_bytes=_bytes(4) * 2, min_tokens=2)
    store.publish([1, 1, 1, 1], _layers(4))
    store.publish([2, 2, 2, 2], _layers(4))
    assert store.lookup([1, 1, 1, 1, 0], limit=5) is not None  # 1s used last
    store.publish([3, 3, 3, 3], _layers(4))
    assert store.entries == 2 and store.bytes == _bytes(4) * 2
    assert store.lookup([2, 2, 2, 2], limit=4) is None
    assert store.lookup([1, 1, 1, 1], limit=4) is not None
    store.publish(list(range(20)), _layers(20))  # larger than the whole budget: not kept
    assert store.lookup(list(range(20)), limit=20) is None and store.entries == 2


def test_the_budget_is_an_admins_number_of_mib() -> None:
    assert SharedPrefixes.budget_bytes({}) == 256 * 2**20
    assert SharedPrefixes.budget_bytes({"prefix_sharing_mb": 0}) == 0
    assert SharedPrefixes.budget_bytes({"prefix_sharing_mb": 0.5}) == 2**19
    for bad in (-1, "64", True, None):
        with pytest.raises(ModelLoadError, match="prefix_sharing_mb"):
            SharedPrefixes.budget_bytes({"prefix_sharing_mb": bad})


# -- on a model ----------------------------------------------------------------------------------
def _generator(path: Path, **options: Any) -> HFTextGenerator:
    return HFTextGenerator(ModelSpec(path=str(path), name="tiny", engine_options=options))


def _prompt(question: str) -> PromptInput:
    return PromptInput.chat(
        [ChatMessage(role="system", content=SYSTEM), ChatMessage(role="user", content=question)]
    )


def _same(a: list[Candidate], b: list[Candidate]) -> None:
    for x, y in zip(a, b, strict=True):
        assert y.token_ids == x.token_ids
        assert y.token_logprobs == pytest.approx(x.token_logprobs, abs=1e-4)


def _run(session: HFGenerationSession) -> tuple[list[Candidate], int]:
    try:
        return session.generate("", SAMPLINGS, LIMITS), session.counters.prefilled
    finally:
        session.close()


@pytest.fixture(params=["llama", "gpt2", "gemma3"])
def arch(request) -> str:  # type: ignore[no-untyped-def]
    return str(request.param)


def test_a_later_job_prefills_only_what_its_prompt_does_not_share(
    tiny_dirs: dict[str, Path], arch: str
) -> None:
    sharing = _generator(tiny_dirs[arch])
    plain = _generator(tiny_dirs[arch], prefix_sharing_mb=0)
    assert sharing.shared_prefixes is not None and plain.shared_prefixes is None
    first_session = sharing.open_session(_prompt("Count to three."), seed=1)
    first_tokens = len(first_session.prompt_ids)
    first, first_prefilled = _run(first_session)
    assert first_prefilled == first_tokens and sharing.shared_prefixes.entries == 1
    second_session = sharing.open_session(_prompt("Count to five."), seed=2)
    prompt_tokens = len(second_session.prompt_ids)
    second, second_prefilled = _run(second_session)
    assert sharing.shared_prefixes.hits == 1
    reused = sharing.shared_prefixes.reused_tokens
    assert reused >= 8 and second_prefilled == prompt_tokens - reused
    _same(_run(plain.open_session(_prompt("Count to three."), seed=1))[0], first)
    expected, plain_prefilled = _run(plain.open_session(_prompt("Count to five."), seed=2))
    assert plain_prefilled == prompt_tokens
    _same(expected, second)


def test_jobs_in_the_decode_loop_start_from_shared_prefixes(tiny_dirs: dict[str, Path], arch: str) -> None:
    sharing = _generator(tiny_dirs[arch])
    plain = _generator(tiny_dirs[arch], prefix_sharing_mb=0)
    questions = [f"Count to {n}, then stop." for n in range(4)]
    _run(sharing.open_session(_prompt("Count to nine."), seed=0))  # leaves the system prompt
    expected = [_run(plain.open_session(_prompt(q), seed=i))[0] for i, q in enumerate(questions)]
    sessions = [sharing.open_session(_prompt(q), seed=i) for i, q in enumerate(questions)]
    results: list[Any] = [None] * len(sessions)

    def work(i: int) -> None:
        results[i] = sessions[i].generate("", SAMPLINGS, LIMITS)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(sessions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    prefilled = [s.counters.prefilled for s in sessions]
    prompts = [len(s.prompt_ids) for s in sessions]
    for session in sessions:
        session.close()
    assert sharing.batcher is not None and sharing.batcher.admitted >= 1
    assert all(p < n for p, n in zip(prefilled, prompts, strict=True))
    for want, got in zip(expected, results, strict=True):
        _same(want, got)


def test_a_session_without_cache_reuse_neither_reads_nor_leaves_prefixes(tiny_dirs: dict[str, Path]) -> None:
    sharing = _generator(tiny_dirs["llama"])
    _run(sharing.open_session(_prompt("Count to three."), seed=1, reuse_cache=False))
    assert sharing.shared_prefixes is not None and sharing.shared_prefixes.entries == 0
    _run(sharing.open_session(_prompt("Count to three."), seed=1))
    session = sharing.open_session(_prompt("Count to four."), seed=1, reuse_cache=False)
    _, prefilled = _run(session)
    assert prefilled == len(session.prompt_ids) and sharing.shared_prefixes.hits == 0


def test_prompts_longer_than_a_sliding_window_share_their_prefixes_too(tmp_path: Path) -> None:
    """Window 8, prompts of 30+ tokens: the sliding layers keep every column (the prefix
    cache records the past), so an entry holds the whole prompt, and a session started from it
    decodes as one that prefilled everything, over two rounds (the second crops its cache)."""
    from tests.tiny_models import build_tiny_model

    path = build_tiny_model(tmp_path / "gemma", arch="gemma3", vocab_seed=6)
    sharing, plain = _generator(path), _generator(path, prefix_sharing_mb=0)
    assert sharing.shared_prefixes is not None

    def two_rounds(session: HFGenerationSession) -> list[Candidate]:
        try:
            first = session.generate("", SAMPLINGS, LIMITS)
            return first + session.generate(first[1].text, SAMPLINGS, LIMITS)
        finally:
            session.close()

    two_rounds(sharing.open_session(_prompt("Count to three."), seed=1))
    later = sharing.open_session(_prompt("Count to five."), seed=2)
    assert len(later.prompt_ids) > 30
    got = two_rounds(later)
    assert sharing.shared_prefixes.hits == 1 and sharing.shared_prefixes.reused_tokens > 8
    _same(two_rounds(plain.open_session(_prompt("Count to five."), seed=2)), got)


# -- scopes: a tenant's prompts are shared with its own jobs only --------------------------------
def test_entries_of_one_scope_are_invisible_to_another() -> None:
    store = SharedPrefixes(max_bytes=10**6, min_tokens=2)
    store.publish([1, 2, 3, 4], _layers(4), "alice")
    assert store.lookup([1, 2, 3, 4, 5], limit=5, scope="bob") is None
    assert store.lookup([1, 2, 3, 4, 5], limit=5) is None  # the open mode's scope is None
    store.publish([1, 2, 3], _layers(3), "bob")  # alice's longer entry does not cover bob's
    assert store.entries == 2 and store.scopes() == {"alice", "bob"}
    ids, _ = store.lookup([1, 2, 3, 4, 5], limit=5, scope="alice") or ([], [])
    assert ids == [1, 2, 3, 4]
    ids, _ = store.lookup([1, 2, 3, 4, 5], limit=5, scope="bob") or ([], [])
    assert ids == [1, 2, 3]


def test_a_session_reads_and_leaves_prefixes_in_the_scope_it_was_opened_in(
    tiny_dirs: dict[str, Path],
) -> None:
    from ensemble_core.prefix_scope import prefix_scope

    sharing = _generator(tiny_dirs["llama"])
    assert sharing.shared_prefixes is not None
    with prefix_scope("alice"):
        _run(sharing.open_session(_prompt("Count to three."), seed=1))
    assert sharing.shared_prefixes.scopes() == {"alice"}
    with prefix_scope("bob"):
        bob = sharing.open_session(_prompt("Count to four."), seed=1)
    _, prefilled = _run(bob)  # generated outside the block: the session keeps its scope
    assert prefilled == len(bob.prompt_ids) and sharing.shared_prefixes.hits == 0
    with prefix_scope("alice"):
        alice = sharing.open_session(_prompt("Count to four."), seed=1)
    _, prefilled = _run(alice)
    assert prefilled < len(alice.prompt_ids) and sharing.shared_prefixes.hits == 1
    assert sharing.shared_prefixes.scopes() == {"alice", "bob"}


def test_the_engines_member_threads_open_sessions_in_the_jobs_scope(tiny_dirs: dict[str, Path]) -> None:
    from ensemble_core.engine import run_ensemble
    from ensemble_core.pool import ModelPool
    from ensemble_core.prefix_scope import prefix_scope
    from ensemble_core.spec import EnsembleConfig, EnsembleSpec, GenerationRequest

    pool = ModelPool()
    spec = EnsembleSpec(
        model_specs=[
            ModelSpec(path=str(tiny_dirs["llama"]), name="a", temperature=0.0),
            ModelSpec(path=str(tiny_dirs["gpt2"]), name="b", temperature=0.0),
        ]
    )
    # reward_based: both members write a candidate each round, in the engine's member threads
    config = EnsembleConfig(
        model_selection_method="all", ensemble_method="reward_based", max_rounds=2,
        aggregation_params={"segment_tokens": 4, "concurrent": True},
    )  # fmt: skip
    request = GenerationRequest(
        messages=[ChatMessage(role="system", content=SYSTEM), ChatMessage(role="user", content="Count.")],
        max_tokens=8,
        seed=7,
    )
    with prefix_scope("carol"):
        run_ensemble(spec, config, request, pool)
    scopes = [pool.generator(member).shared_prefixes.scopes() for member in spec.model_specs]  # type: ignore[union-attr]
    assert scopes == [{"carol"}, {"carol"}]
