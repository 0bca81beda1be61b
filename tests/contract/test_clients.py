"""Widely used clients, unchanged, against the live stack (real API, worker, Postgres, Redis):
the openai SDK, langchain-openai, litellm and lm-evaluation-harness.

The stack serves tiny random models, whose free text means nothing; so that every call can
assert its content, most calls force it with ``logit_bias`` (a token id of the member's own
vocabulary, +100): greedy decoding then writes that token ``max_tokens`` times, and the exact
text proves the field went through the client, the API, the queue and the decoder."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import openai
import pytest

pytestmark = pytest.mark.usefixtures("show_logs_on_failure")

# litellm reads its model price list from the network unless told to use its bundled copy
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

MEMBER = "tiny-llama"
TOKENS = 4


@pytest.fixture(scope="module")
def forced(tiny_model_dirs) -> tuple[str, dict[str, int]]:  # type: ignore[no-untyped-def]
    """The text greedy decoding writes under the bias, and the bias (token id -> +100)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dirs["llama"])
    ids = tokenizer("a", add_special_tokens=False)["input_ids"]
    assert len(ids) == 1
    return "a" * TOKENS, {str(ids[0]): 100}


@pytest.fixture(scope="module")
def client(stack) -> openai.OpenAI:
    # the first job of a fresh worker loads the models: wait for it longer than a request does
    warm = {"model": MEMBER, "prompt": "Hi", "max_tokens": 1, "timeout": 300}
    assert httpx.post(stack.base_url + "/v1/completions", json=warm, timeout=320).status_code == 200
    return openai.OpenAI(base_url=stack.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


# ---------------------------------------------------------------- openai


def test_openai_logit_bias_and_vllm_fields_reach_the_decoder(client, forced):
    text, bias = forced
    chat = client.chat.completions.create(
        model=MEMBER,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=TOKENS,
        temperature=0,
        logit_bias=bias,
        extra_body={"top_k": 5, "min_p": 0.0, "repetition_penalty": 1.0},
    )
    assert chat.choices[0].message.content == text
    legacy = client.completions.create(
        model=MEMBER, prompt="Hi", max_tokens=TOKENS, temperature=0, logit_bias=bias
    )
    assert legacy.choices[0].text == text
    # min_tokens holds EOS back: with EOS forced, the answer is exactly min_tokens long
    eos = {"2": 100}  # <|im_end|>, the tiny models' EOS (SPECIAL_TOKENS[2])
    held = client.completions.create(
        model=MEMBER,
        prompt="Hi",
        max_tokens=12,
        temperature=0,
        logit_bias=eos,
        extra_body={"min_tokens": 3},
    )
    assert held.usage.completion_tokens == 3 and held.choices[0].finish_reason == "stop"


def test_openai_n_and_seeds(client):
    body = {"model": MEMBER, "messages": [{"role": "user", "content": "Tell me"}], "max_tokens": 6}
    fresh = client.chat.completions.create(**body, n=3, temperature=1.2)
    texts = [c.message.content for c in fresh.choices]
    assert [c.index for c in fresh.choices] == [0, 1, 2]
    assert len(set(texts)) > 1, "no seed: each choice gets its own randomness"
    # two separate unseeded calls draw their own randomness too
    apart = [
        client.chat.completions.create(**body, temperature=1.2).choices[0].message.content for _ in range(2)
    ]
    assert apart[0] != apart[1], "no seed: each request gets fresh randomness"
    seeded = [
        client.chat.completions.create(**body, temperature=1.2, seed=11).choices[0].message.content
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1], "a seed replays"
    greedy = [
        client.chat.completions.create(**body, temperature=0).choices[0].message.content for _ in range(2)
    ]
    assert greedy[0] == greedy[1]


def test_openai_stream_delivers_the_forced_text(client, forced):
    text, bias = forced
    stream = client.chat.completions.create(
        model=MEMBER,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=TOKENS,
        temperature=0,
        logit_bias=bias,
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == text


def test_openai_stream_of_a_member_comes_token_by_token(client):
    """A lone member's 32 greedy tokens stream in many chunks that add up to the non-streamed
    answer (the test stack's worker publishes every token; by default it coalesces to at
    most one message every 30 ms, tested in tests/unit/core/test_token_streaming.py)."""
    body = {
        "model": MEMBER,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": 32,
        "temperature": 0,
        "extra_body": {"ignore_eos": True},
    }
    whole = client.chat.completions.create(**body).choices[0].message.content
    chunks = [
        c.choices[0].delta.content for c in client.chat.completions.create(**body, stream=True) if c.choices
    ]
    pieces = [p for p in chunks if p]
    assert "".join(pieces) == whole and len(whole) > 0
    assert len(pieces) >= 16, pieces


def test_reward_based_streams_a_short_first_segment(client, stack):
    config = {
        "model_selection_method": "all",
        "aggregation_method": "reward_based",
        "aggregation_params": {"segment_tokens": 24, "segment_boundary": "none"},
    }
    stream = client.chat.completions.create(
        model="ensemble",
        messages=[{"role": "user", "content": "Tell me a story."}],
        max_tokens=40,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True, "ensemble_config": config},
    )
    chunks = [c for c in stream if c.choices]
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    job = httpx.get(f"{stack.base_url}/v1/jobs/{chunks[0].id}", timeout=30).json()
    rounds = job["result"]["trace"]["rounds"]
    first = rounds[0]["candidates"][rounds[0]["winner_index"]]
    assert first["tokens"] == 8 and pieces[0] == first["text"]  # the first chunk: 8 tokens
    assert "".join(pieces) == job["result"]["text"]


def test_openai_completion_logprobs_list_the_generated_tokens(client, forced):
    text, bias = forced
    legacy = client.completions.create(
        model=MEMBER, prompt="Hi", max_tokens=TOKENS, temperature=0, logit_bias=bias, logprobs=2
    ).choices[0]
    assert legacy.text == text
    lp = legacy.logprobs
    assert lp.tokens == ["a"] * TOKENS and lp.text_offset == list(range(TOKENS))
    # the model's own (raw) log-probabilities, before the bias: negative, two alternatives each
    assert len(lp.token_logprobs) == TOKENS and all(v < 0 for v in lp.token_logprobs)
    assert all(1 <= len(top) <= 2 for top in lp.top_logprobs)
    assert lp.model_extra["models"] == [MEMBER] * TOKENS  # the writer of each token
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MEMBER, prompt="Hi", max_tokens=2, logprobs=21)
    assert caught.value.body["param"] == "logprobs"


def test_openai_chat_logprobs_and_top_logprobs(client, forced):
    text, bias = forced
    body = {"model": MEMBER, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": TOKENS}
    chat = client.chat.completions.create(
        **body, temperature=0, logit_bias=bias, logprobs=True, top_logprobs=3
    ).choices[0]
    assert chat.message.content == text
    content = chat.logprobs.content
    assert [c.token for c in content] == ["a"] * TOKENS
    assert all(c.bytes == [ord("a")] and c.logprob < 0 for c in content)
    for c in content:
        ranked = [t.logprob for t in c.top_logprobs]
        assert 1 <= len(ranked) <= 3 and ranked == sorted(ranked, reverse=True)
    # the ensemble: each token named after the member that wrote it (loop: both take turns)
    mixed = client.chat.completions.create(
        model="ensemble", messages=body["messages"], max_tokens=8, temperature=0, logprobs=True
    ).choices[0]
    writers = {c.model_extra["model"] for c in mixed.logprobs.content}
    assert "".join(c.token for c in mixed.logprobs.content) == mixed.message.content
    assert writers <= {"tiny-llama", "tiny-gpt2"} and writers
    assert client.chat.completions.create(**body).choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**body, top_logprobs=2)
    assert caught.value.body["param"] == "top_logprobs"


def test_openai_echo_with_logprobs_scores_the_raw_prompt(client):
    scored = client.completions.create(
        model=MEMBER, prompt="The capital of France", max_tokens=0, echo=True, logprobs=3
    )
    choice = scored.choices[0]
    assert choice.text == "The capital of France"
    logprobs = choice.logprobs
    assert "".join(logprobs.tokens) == "The capital of France"  # raw text, no chat template
    assert logprobs.token_logprobs[0] is None and all(v < 0 for v in logprobs.token_logprobs[1:])
    # up to 3 alternatives (ids that decode to the same text share one key, as OpenAI's do)
    for top, value in zip(logprobs.top_logprobs[1:], logprobs.token_logprobs[1:], strict=True):
        assert 1 <= len(top) <= 3 and max(top.values()) >= value - 1e-6
    assert logprobs.text_offset[0] == 0 and logprobs.text_offset == sorted(logprobs.text_offset)
    one_more = client.completions.create(
        model=MEMBER, prompt="The capital of France", max_tokens=1, echo=True, logprobs=1, temperature=0
    ).choices[0]
    assert one_more.text == "The capital of France" + one_more.logprobs.tokens[-1]
    assert one_more.logprobs.token_logprobs[1:-1] == pytest.approx(logprobs.token_logprobs[1:], abs=1e-5)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MEMBER, prompt="Hi", max_tokens=5, echo=True, logprobs=1)
    assert caught.value.body["param"] == "echo"
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MEMBER, prompt="Hi", max_tokens=0)
    assert caught.value.body["param"] == "max_tokens"


def test_openai_invalid_values_are_bad_requests(client):
    for kwargs in ({"max_tokens": -1}, {"n": 9}, {"extra_body": {"top_k": -5}}):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model=MEMBER, messages=[{"role": "user", "content": "Hi"}], **kwargs
            )
        param = next(iter(kwargs)) if "extra_body" not in kwargs else "top_k"
        assert caught.value.body["param"] == param
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(model=MEMBER, prompt="Hi", **kwargs)
        assert caught.value.body["param"] == param


def test_openai_vllm_stop_fields_and_ignored_openai_fields(client, forced, tiny_model_dirs):
    """vLLM's stop fields through ``extra_body``, each changing the forced text; OpenAI's fields
    with no meaning here are accepted and change nothing."""
    from transformers import AutoTokenizer

    text, bias = forced
    (a_id,) = (int(k) for k in bias)
    body = {"model": MEMBER, "prompt": "Hi", "max_tokens": TOKENS, "temperature": 0, "logit_bias": bias}

    def answer(**extra):  # type: ignore[no-untyped-def]
        return client.completions.create(**body, extra_body=extra).choices[0]

    assert answer(stop=["aa"]).text == ""
    assert answer(stop=["aa"], include_stop_str_in_output=True).text == "aa"
    ended = answer(stop_token_ids=[a_id])
    assert ended.text == "" and ended.finish_reason == "stop"
    # EOS forced: the answer is empty, unless ignore_eos; skip_special_tokens=False shows it
    # (max_tokens cuts the answer: "length", though its 4 equal tokens are also a loop)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dirs["llama"])
    body.update(logit_bias={str(tokenizer.eos_token_id): 100})
    assert answer().text == "" and answer().finish_reason == "stop"
    kept = answer(ignore_eos=True, skip_special_tokens=False)
    assert kept.text == tokenizer.eos_token * TOKENS and kept.finish_reason == "length"
    assert answer(ignore_eos=True).text == ""
    ignored = client.chat.completions.create(
        model=MEMBER,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=TOKENS,
        temperature=0,
        logit_bias=bias,
        user="u-1",
        metadata={"k": "v"},
        store=False,
        service_tier="auto",
        extra_body={"prompt_cache_key": "c-1", "parallel_tool_calls": False},
    )
    assert ignored.choices[0].message.content == text


# ---------------------------------------------------------------- langchain-openai


def test_langchain_chat_invoke_and_stream(stack, forced):
    from langchain_openai import ChatOpenAI

    text, bias = forced
    llm = ChatOpenAI(
        model=MEMBER,
        base_url=stack.base_url + "/v1",
        api_key="unused",
        temperature=0,
        max_tokens=TOKENS,
        logit_bias={int(k): v for k, v in bias.items()},
        max_retries=0,
        # fields with no meaning here that langchain may send are accepted and ignored
        extra_body={"parallel_tool_calls": False, "store": False, "service_tier": "auto"},
    )
    assert llm.invoke("Hi").content == text
    assert "".join(str(chunk.content) for chunk in llm.stream("Hi")) == text


def test_langchain_completions_batch(stack, forced):
    from langchain_openai import OpenAI

    text, bias = forced
    # langchain packs the prompts into one request (a prompt list)
    llm = OpenAI(
        model=MEMBER,
        base_url=stack.base_url + "/v1",
        api_key="unused",
        temperature=0,
        max_tokens=TOKENS,
        logit_bias=dict(bias),
        max_retries=0,
    )
    assert llm.batch(["Hi", "Hello", "Hey"]) == [text] * 3


# ---------------------------------------------------------------- litellm


def test_litellm_completion_stream_and_text_completion(stack, forced):
    import litellm

    text, bias = forced
    common = {
        "api_base": stack.base_url + "/v1",
        "api_key": "unused",
        "max_tokens": TOKENS,
        "temperature": 0,
        "logit_bias": bias,
    }
    messages = [{"role": "user", "content": "Hi"}]
    answer = litellm.completion(model=f"openai/{MEMBER}", messages=messages, **common)
    assert answer.choices[0].message.content == text
    stream = litellm.completion(model=f"openai/{MEMBER}", messages=messages, stream=True, **common)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == text
    legacy = litellm.text_completion(model=f"text-completion-openai/{MEMBER}", prompt="Hi", **common)
    assert legacy.choices[0].text == text


# ---------------------------------------------------------------- lm-evaluation-harness


def _lm_eval_task(directory: Path, bias: dict[str, int], target: str) -> str:
    """A local generate_until task (JSONL items, exact match), forced to ``target``."""
    import json

    items = directory / "items.jsonl"
    items.write_text(
        "".join(json.dumps({"question": f"Q{i}: say a", "answer": target}) + "\n" for i in range(3))
    )
    bias_yaml = ", ".join(f'"{k}": {v}' for k, v in bias.items())
    (directory / "ehub_gen.yaml").write_text(
        "task: ehub_gen\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {items}\n"
        "test_split: test\n"
        "output_type: generate_until\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "generation_kwargs:\n"
        '  until: ["\\n"]\n'
        f"  max_gen_toks: {TOKENS}\n"
        "  do_sample: false\n"
        f"  logit_bias: {{{bias_yaml}}}\n"
        "metric_list:\n  - metric: exact_match\n"
    )
    return "ehub_gen"


@pytest.mark.parametrize("lm_eval_model", ["local-completions", "local-chat-completions"])
def test_lm_eval_generate_until_on_a_local_task(stack, forced, tmp_path, lm_eval_model):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    text, bias = forced
    task = _lm_eval_task(tmp_path, bias, text)
    endpoint = "/v1/completions" if lm_eval_model == "local-completions" else "/v1/chat/completions"
    results = simple_evaluate(
        model=lm_eval_model,
        model_args={
            "model": MEMBER,
            "base_url": stack.base_url + endpoint,
            "tokenizer_backend": None,
            "tokenized_requests": False,
            "num_concurrent": 1,
            "max_retries": 1,
        },
        tasks=[task],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        apply_chat_template=lm_eval_model == "local-chat-completions",
        log_samples=True,
    )
    assert results is not None
    samples = results["samples"][task]
    assert [s["resps"][0][0] for s in samples] == [text] * 3
    assert results["results"][task]["exact_match,none"] == 1.0


def test_lm_eval_generate_until_through_the_ensemble(stack, tmp_path):
    """The ensemble answers lm-eval too (free text of random models: the responses are the
    jobs' answers, whatever they say)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    task = _lm_eval_task(tmp_path, {}, "a")
    results = simple_evaluate(
        model="local-completions",
        model_args={
            "model": "ensemble",
            "base_url": stack.base_url + "/v1/completions",
            "tokenizer_backend": None,
            "tokenized_requests": False,
            "max_retries": 1,
        },
        tasks=[task],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        log_samples=True,
    )
    assert results is not None
    responses = [s["resps"][0][0] for s in results["samples"][task]]
    assert len(responses) == 3
    jobs = httpx.get(stack.base_url + "/v1/jobs", params={"limit": 50}).json()["data"]
    answered = {j.get("result", {}).get("text") for j in jobs if j.get("result")}
    assert all(r in answered for r in responses)


def _lm_eval_choice_task(directory: Path) -> str:
    """A local multiple_choice task: lm-eval scores each choice with echo + logprobs."""
    import json

    items = [
        {"question": "The capital of France is", "choices": [" Paris", " a dog", " seven"], "label": 0},
        {"question": "Two plus two is", "choices": [" four", " blue"], "label": 0},
        {"question": "The quick brown fox", "choices": [" jumps over", " is a city"], "label": 0},
    ]
    path = directory / "choices.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    (directory / "ehub_mc.yaml").write_text(
        "task: ehub_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {path}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        "doc_to_choice: choices\n"
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n"
    )
    return "ehub_mc"


def _loglikelihoods(results: dict, task: str) -> list[list[float]]:  # type: ignore[type-arg]
    return [[float(r[0][0]) for r in s["resps"]] for s in results["samples"][task]]


def test_lm_eval_with_token_id_prompts(stack, forced, tiny_model_dirs, tmp_path):
    """lm-eval's ``tokenized_requests`` (its default with a tokenizer): prompts go as token ids,
    two per request; a member's log-likelihoods equal lm-eval's ``hf`` model (1e-3) and a
    generate_until task gets the forced answer."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    text, bias = forced
    weights = str(tiny_model_dirs["llama"])
    choice_task = _lm_eval_choice_task(tmp_path)
    gen_task = _lm_eval_task(tmp_path, bias, text)
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    served = simple_evaluate(
        model="local-completions",
        model_args={
            "model": MEMBER,
            "base_url": stack.base_url + "/v1/completions",
            "tokenizer_backend": "huggingface",
            "tokenizer": weights,
            "tokenized_requests": True,
            "batch_size": 2,
            "max_retries": 1,
        },
        tasks=[choice_task, gen_task],
        task_manager=manager,
        log_samples=True,
    )
    local = simple_evaluate(
        model=HFLM(pretrained=weights, device="cpu", batch_size=1),
        tasks=[choice_task],
        task_manager=manager,
        log_samples=True,
    )
    assert served is not None and local is not None
    ours, theirs = _loglikelihoods(served, choice_task), _loglikelihoods(local, choice_task)
    assert len(ours) == 3
    for row_ours, row_theirs in zip(ours, theirs, strict=True):
        assert row_ours == pytest.approx(row_theirs, abs=1e-3)
    assert [s["resps"][0][0] for s in served["samples"][gen_task]] == [text] * 3


def test_lm_eval_multiple_choice_matches_lm_evals_own_hf_model(stack, tiny_model_dirs, tmp_path):
    """The service's log-likelihoods of a member equal lm-eval's ``hf`` model on the same
    weights (1e-3); the ensemble answers the same task by the documented echo rule."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    task = _lm_eval_choice_task(tmp_path)
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    weights = str(tiny_model_dirs["llama"])

    def through_the_service(model: str) -> dict:  # type: ignore[type-arg]
        results = simple_evaluate(
            model="local-completions",
            model_args={
                "model": model,
                "base_url": stack.base_url + "/v1/completions",
                "tokenizer_backend": "huggingface",
                "tokenizer": weights,
                "tokenized_requests": False,
                "max_retries": 1,
            },
            tasks=[task],
            task_manager=manager,
            log_samples=True,
        )
        assert results is not None
        return results

    served = through_the_service(MEMBER)
    local = simple_evaluate(
        model=HFLM(pretrained=weights, device="cpu", batch_size=1),
        tasks=[task],
        task_manager=manager,
        log_samples=True,
    )
    assert local is not None
    ours, theirs = _loglikelihoods(served, task), _loglikelihoods(local, task)
    assert len(ours) == 3 and all(len(row) >= 2 for row in ours)
    for row_ours, row_theirs in zip(ours, theirs, strict=True):
        assert row_ours == pytest.approx(row_theirs, abs=1e-3)
    assert served["results"][task]["acc,none"] == local["results"][task]["acc,none"]

    ensemble = through_the_service("ensemble")
    mixed = _loglikelihoods(ensemble, task)
    assert [len(row) for row in mixed] == [len(row) for row in ours]
    assert all(value < 0 for row in mixed for value in row)


# ---------------------------------------------------------------- guidellm


def test_guidellm_short_synchronous_run(stack, tiny_model_dirs, tmp_path):
    """guidellm probes /health, then sends synthetic prompts with ``ignore_eos`` and a
    streamed answer; synchronous requests succeed, each with the asked output length."""
    import json
    import subprocess
    import sys

    report = tmp_path / "guidellm.json"
    argv = [
        sys.executable,
        "-m",
        "guidellm",
        "run",
        "--backend",
        f"kind=openai_http,target={stack.base_url},model={MEMBER}",
        "--profile",
        "kind=synchronous",
        "--constraint",
        "kind=max_requests,count=3",
        "--tokenizer",
        f"kind=huggingface_auto,model={tiny_model_dirs['llama']}",
        "--data",
        "kind=synthetic_text,prompt_tokens=16,output_tokens=4",
        "--output",
        f"kind=json,path={report}",
        "--disable-console-interactive",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    benchmark = json.loads(report.read_text())["benchmarks"][0]
    totals = benchmark["metrics"]["request_totals"]
    # guidellm counts the requests it finished inside the constraint (2 or 3 of the 3 sent)
    assert totals["successful"] >= 2 and totals["errored"] == 0 and totals["incomplete"] == 0, totals
    assert benchmark["metrics"]["output_token_count"]["successful"]["mean"] == 4, benchmark["metrics"][
        "output_token_count"
    ]
