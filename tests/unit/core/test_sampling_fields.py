"""vLLM's sampling fields on the HF decoders (direct and batched), on tiny random models: each
field changes what is decoded the way vLLM documents it; and the request's randomness rules
(no seed: fresh per run; a seed: replayable; the request's temperature over a member's)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from ensemble_core.backends.hf import HFTextGenerator
from ensemble_core.backends.sampling import adjust_logits, cut_distribution
from ensemble_core.engine import run_ensemble
from ensemble_core.pool import ModelPool
from ensemble_core.ports import Sampling, SegmentLimits
from ensemble_core.segment_text import find_stop
from ensemble_core.spec import ChatMessage, EnsembleConfig, EnsembleSpec, ModelSpec, PromptInput
from tests.unit.core.conftest import ask

MESSAGES = [ChatMessage(role="user", content="What is 2+2?")]
GREEDY = Sampling(0.0)
LONG = SegmentLimits(max_new_tokens=12, boundary="none")


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny(request, pool: ModelPool, tiny_dirs: dict[str, Path]) -> HFTextGenerator:  # type: ignore[no-untyped-def]
    generator = pool.generator(ModelSpec(path=str(tiny_dirs[request.param]), name=request.param))
    assert isinstance(generator, HFTextGenerator)
    return generator


def _one(tiny: HFTextGenerator, sampling: Sampling, limits: SegmentLimits = LONG, seed: int = 0):  # type: ignore[no-untyped-def]
    session = tiny.open_session(PromptInput.chat(MESSAGES), seed=seed)
    try:
        return session.generate("", [sampling], limits)[0]
    finally:
        session.close()


def _plain_token(tiny: HFTextGenerator, text: str) -> int:
    ids = tiny.encode(text)
    assert len(ids) == 1
    return ids[0]


def _eos(tiny: HFTextGenerator) -> int:
    return int(tiny.tokenizer.eos_token_id)


def test_logit_bias_forces_a_token(tiny: HFTextGenerator) -> None:
    forced = _plain_token(tiny, "a")
    candidate = _one(tiny, Sampling(0.0, logit_bias=((forced, 100.0),)))
    assert candidate.token_ids == [forced] * 12
    assert candidate.text == "a" * 12
    # a hot sample is forced too; the reported log-probabilities stay the model's own
    hot = _one(tiny, Sampling(1.0, logit_bias=((forced, 100.0),)), seed=3)
    assert hot.token_ids == [forced] * 12
    assert all(lp < -0.01 for lp in hot.token_logprobs)
    # a ban: the greedy first token never comes back
    first = _one(tiny, GREEDY).token_ids[0]
    banned = _one(tiny, Sampling(0.0, logit_bias=((first, -100.0),)))
    assert first not in banned.token_ids


def test_min_tokens_delays_eos_and_ignore_eos_passes_it(tiny: HFTextGenerator) -> None:
    eager = Sampling(0.0, logit_bias=((_eos(tiny), 100.0),))  # EOS at once when allowed
    assert _one(tiny, eager).finish == "eos"
    assert _one(tiny, eager).token_ids == []
    delayed = _one(tiny, eager, SegmentLimits(max_new_tokens=12, boundary="none", eos_after=5))
    assert delayed.finish == "eos"
    assert delayed.num_tokens == 5
    ignored = _one(tiny, eager, SegmentLimits(max_new_tokens=6, boundary="none", ignore_eos=True))
    assert ignored.finish == "length"
    assert ignored.token_ids == [_eos(tiny)] * 6


def test_repetition_presence_and_frequency_penalties_change_the_greedy_text(tiny: HFTextGenerator) -> None:
    # a small bias makes greedy decoding loop on one token (random logits are close to 0)
    looped = _one(tiny, GREEDY).token_ids[0]
    bias = ((looped, 0.5),)
    greedy = _one(tiny, Sampling(0.0, logit_bias=bias)).token_ids
    assert greedy == [looped] * 12
    for penalty in ({"repetition_penalty": 5.0}, {"frequency_penalty": 0.3}, {"presence_penalty": 1.0}):
        penalised = _one(tiny, Sampling(0.0, logit_bias=bias, **penalty)).token_ids  # type: ignore[arg-type]
        assert penalised.count(looped) < 6, penalty
        assert len(set(penalised)) > 3, penalty
    # the frequency penalty grows with each use: a token is used a few times, then dropped
    assert (
        _one(tiny, Sampling(0.0, logit_bias=((looped, 0.5),), frequency_penalty=0.3)).token_ids[0] == looped
    )


def test_top_k_one_and_min_p_one_sample_the_greedy_tokens(tiny: HFTextGenerator) -> None:
    greedy = _one(tiny, GREEDY).token_ids
    hot = _one(tiny, Sampling(1.5), seed=11).token_ids
    assert hot != greedy
    assert _one(tiny, Sampling(1.5, top_k=1), seed=11).token_ids == greedy
    assert _one(tiny, Sampling(1.5, min_p=1.0), seed=11).token_ids == greedy


def test_stop_token_ids_end_the_answer_without_the_token(tiny: HFTextGenerator) -> None:
    greedy = _one(tiny, GREEDY).token_ids
    stop = greedy[0]
    candidate = _one(tiny, GREEDY, SegmentLimits(max_new_tokens=12, boundary="none", stop_token_ids=(stop,)))
    assert candidate.finish == "eos"
    assert candidate.token_ids == []


def test_skip_special_tokens_false_keeps_them_in_the_text(tiny: HFTextGenerator) -> None:
    special = int(tiny.tokenizer.convert_tokens_to_ids("<|im_start|>"))
    sampling = Sampling(0.0, logit_bias=((special, 100.0),))
    limits = SegmentLimits(max_new_tokens=2, boundary="none")
    assert _one(tiny, sampling, limits).text == ""
    shown = SegmentLimits(max_new_tokens=2, boundary="none", skip_special_tokens=False)
    assert _one(tiny, sampling, shown).text == "<|im_start|><|im_start|>"


def test_the_batched_decoder_applies_the_fields_too(tiny_dirs: dict[str, Path]) -> None:
    generator = HFTextGenerator(ModelSpec(path=str(tiny_dirs["llama"])))
    forced = _plain_token(generator, "a")
    eos = _eos(generator)
    samplings = [
        Sampling(0.0, logit_bias=((forced, 100.0),)),
        Sampling(0.0, logit_bias=((eos, 100.0),)),
    ]
    limits = SegmentLimits(max_new_tokens=6, boundary="none", eos_after=3)
    sessions = [generator.open_session(PromptInput.chat(MESSAGES), seed=i) for i in range(2)]
    results: list = [None, None]

    def run(i: int) -> None:
        results[i] = sessions[i].generate("", samplings, limits)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for session in sessions:
        session.close()
    assert generator.batcher is not None and generator.batcher.admitted == 2  # both through the loop
    for forced_row, eos_row in results:
        assert forced_row.token_ids == [forced] * 6
        assert eos_row.finish == "eos" and eos_row.num_tokens == 3


def test_adjust_logits_follows_the_documented_rules() -> None:
    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    out = adjust_logits(logits, Sampling(repetition_penalty=2.0), context=[0, 1])
    assert out.tolist() == [1.0, -4.0, 1.0, 0.5]
    out = adjust_logits(logits, Sampling(presence_penalty=0.5, frequency_penalty=1.0), output=[2, 2, 3])
    assert out.tolist() == [2.0, -2.0, 1.0 - 2.0 - 0.5, 0.5 - 1.0 - 0.5]
    out = adjust_logits(logits, Sampling(logit_bias=((1, 10.0), (99, 5.0))), blocked={0})
    assert out[0] == -torch.inf and out[1] == 8.0  # id 99 is not in this vocabulary: ignored
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    kept = [0.5, 0.3, 0.0, 0.0]
    assert cut_distribution(probs.clone(), Sampling(1.0, top_k=2)).tolist() == pytest.approx(kept)
    assert cut_distribution(probs.clone(), Sampling(1.0, min_p=0.5)).tolist() == pytest.approx(kept)


def test_include_stop_str_keeps_the_stop_string() -> None:
    match = find_stop("", "one. two", ("two",), include=True)
    assert match is not None and match.keep_chars == len("one. two") and match.trim_accepted == 0
    # a stop string that began in the accepted text: with include, nothing of it is cut
    match = find_stop("ab", "cd", ("bc",), include=True)
    assert match is not None and match.keep_chars == 1 and match.trim_accepted == 0
    match = find_stop("ab", "cd", ("bc",))
    assert match is not None and match.keep_chars == 0 and match.trim_accepted == 1


def test_the_requests_stop_fields_reach_the_decoder(pool: ModelPool, tiny_dirs: dict[str, Path]) -> None:
    """stop_token_ids, include_stop_str_in_output, skip_special_tokens and ignore_eos as a
    request carries them (``segment_limits``), through the engine to the decoder."""
    path = str(tiny_dirs["llama"])
    generator = pool.generator(ModelSpec(path=path))
    assert isinstance(generator, HFTextGenerator)
    spec = EnsembleSpec(model_specs=[ModelSpec(path=path, name="llama")])
    config = EnsembleConfig(use_model_selection=False, use_output_aggregation=False)

    def run(**kw):  # type: ignore[no-untyped-def]
        return run_ensemble(spec, config, ask(max_tokens=8, temperature=0.0, **kw), pool)

    greedy = run(ignore_eos=True)
    ids = generator.encode(greedy.text)
    assert greedy.usage.completion_tokens == 8 and len(set(ids)) > 1
    # a stop token in the middle of the greedy answer ends it there, without the token
    cut = next(i for i, token in enumerate(ids) if i > 0 and token not in ids[:i])
    stopped = run(ignore_eos=True, stop_token_ids=[ids[cut]])
    assert stopped.stop_reason == "eos" and generator.encode(stopped.text) == ids[:cut]
    # a stop string: cut before it, or kept with include_stop_str_in_output
    forced = _plain_token(generator, "a")
    bias = {forced: 100.0}
    assert run(logit_bias=bias, stop=["aa"]).text == ""
    assert run(logit_bias=bias, stop=["aa"], include_stop_str_in_output=True).text == "aa"
    # EOS forced: ignore_eos writes max_tokens of it; skip_special_tokens=False shows them
    eos = {_eos(generator): 100.0}
    assert run(logit_bias=eos).usage.completion_tokens == 0
    shown = run_ensemble(
        spec,
        config,
        ask(max_tokens=3, temperature=0.0, logit_bias=eos, ignore_eos=True, skip_special_tokens=False),
        pool,
    )
    assert shown.usage.completion_tokens == 3 and shown.text == "<|im_end|>" * 3
    hidden = run_ensemble(
        spec, config, ask(max_tokens=3, temperature=0.0, logit_bias=eos, ignore_eos=True), pool
    )
    assert hidden.usage.completion_tokens == 3 and hidden.text == ""


def _texts(
    spec: EnsembleSpec, config: EnsembleConfig, pool: ModelPool, seeds: list[int | None], **kw
) -> list[str]:  # type: ignore[no-untyped-def]
    return [run_ensemble(spec, config, ask(max_tokens=10, seed=seed, **kw), pool).text for seed in seeds]


def test_randomness_fresh_without_a_seed_replayable_with_one(
    pool: ModelPool, tiny_dirs: dict[str, Path]
) -> None:
    spec = EnsembleSpec(model_specs=[ModelSpec(path=str(tiny_dirs["llama"]), name="llama")])
    config = EnsembleConfig(use_model_selection=False, use_output_aggregation=False)
    fresh = _texts(spec, config, pool, [None, None, None], temperature=1.2)
    assert len(set(fresh)) > 1
    seeded = _texts(spec, config, pool, [5, 5], temperature=1.2)
    assert seeded[0] == seeded[1]
    result = run_ensemble(spec, config, ask(max_tokens=10, temperature=1.2), pool)
    replay = run_ensemble(spec, config, ask(max_tokens=10, temperature=1.2, seed=result.trace["seed"]), pool)
    assert replay.text == result.text  # the drawn seed is in the trace


def test_the_requests_temperature_wins_over_a_members(pool: ModelPool, tiny_dirs: dict[str, Path]) -> None:
    hot = EnsembleSpec(model_specs=[ModelSpec(path=str(tiny_dirs["gpt2"]), name="gpt2", temperature=1.5)])
    config = EnsembleConfig(use_model_selection=False, use_output_aggregation=False)
    greedy = _texts(hot, config, pool, [1, 2, None], temperature=0.0)
    assert len(set(greedy)) == 1  # temperature 0: greedy whatever the seed
    default = _texts(hot, config, pool, [1, 2, 3])
    assert len(set(default)) > 1  # without one the member's 1.5 applies
    result = run_ensemble(hot, config, ask(max_tokens=4, temperature=0.0), pool)
    assert result.trace["members"]["gpt2"]["temperature"] == 0.0


def test_min_tokens_counts_the_whole_answer_across_rounds(
    pool: ModelPool, tiny_dirs: dict[str, Path]
) -> None:
    path = str(tiny_dirs["llama"])
    generator = pool.generator(ModelSpec(path=path))
    assert isinstance(generator, HFTextGenerator)
    spec = EnsembleSpec(model_specs=[ModelSpec(path=path, name="a"), ModelSpec(path=path, name="b")])
    config = EnsembleConfig(
        use_model_selection=False,
        aggregation_method="round_robin",
        max_rounds=10,
        aggregation_params={"segment_tokens": 3, "segment_boundary": "none"},
    )
    bias = {_eos(generator): 100.0}
    request = ask(max_tokens=20, temperature=0.0, logit_bias=bias, min_tokens=7)
    result = run_ensemble(spec, config, request, pool)
    assert result.stop_reason == "eos"
    assert result.usage.completion_tokens == 7  # 3 + 3 + 1, then EOS
    assert len(result.trace["rounds"]) == 3
