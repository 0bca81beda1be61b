"""``engine: "openai"`` paths a live Ensemble-Hub does not exercise (it refuses logprobs and echo):
a vLLM-like server scripted with ``httpx.MockTransport`` is the input; the session's cutting,
scoring and retry rules are under test. The live test is tests/integration/test_openai_backend.py.
"""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pytest

from ensemble_core.backends.openai_remote import OpenAITextGenerator, render_prompt
from ensemble_core.errors import GenerationError
from ensemble_core.ports import Sampling, SegmentLimits
from ensemble_core.spec import ChatMessage, ModelSpec, PromptInput

MESSAGES = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Capital?")]
ANSWER = ["Paris", " is", " nice", ".", " It", " is", " big", "."]


class FakeServer:
    """Answers /v1/completions like vLLM: tokens, logprobs, echo with text offsets."""

    def __init__(self, refuse_logprobs: bool = False, fail_first: int = 0) -> None:
        self.refuse_logprobs = refuse_logprobs
        self.fail_first = fail_first
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        if self.fail_first:
            self.fail_first -= 1
            return httpx.Response(503, text="busy")
        if self.refuse_logprobs and ("logprobs" in body or body.get("echo")):
            error = {"message": "logprobs is not supported", "param": "logprobs"}
            return httpx.Response(400, json={"error": error})
        if body.get("echo"):
            words = body["prompt"].split(" ")
            tokens = [w if i == 0 else " " + w for i, w in enumerate(words)]
            offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
            values = [None] + [-0.5 - 0.1 * i for i in range(1, len(tokens))]
            tops = [None] + [{t: -0.25} for t in tokens[1:]]
            logprobs = {
                "tokens": tokens,
                "token_logprobs": values,
                "top_logprobs": tops,
                "text_offset": offsets,
            }
            return httpx.Response(200, json={"choices": [{"text": body["prompt"], "logprobs": logprobs}]})
        tokens = ANSWER[: body["max_tokens"]]
        choice: dict[str, Any] = {"text": "".join(tokens), "finish_reason": "length"}
        if "logprobs" in body:
            values = [-0.1 * (i + 1) for i in range(len(tokens))]
            choice["logprobs"] = {
                "tokens": tokens,
                "token_logprobs": values,
                # vLLM's shape: the top alternatives per token (two here)
                "top_logprobs": [{t: v, "?": v - 2.0} for t, v in zip(tokens, values, strict=True)],
            }
        usage = {"prompt_tokens": 11, "completion_tokens": len(tokens)}
        return httpx.Response(200, json={"choices": [choice], "usage": usage})


def _generator(server: Any, **options: Any) -> OpenAITextGenerator:
    options.setdefault("prompt_format", "raw")  # the /completions paths; chat has its own test
    spec = ModelSpec(path="m", engine="openai", engine_options={"base_url": "http://fake/v1", **options})
    generator = OpenAITextGenerator(spec)
    generator.client = httpx.Client(base_url="http://fake/v1", transport=httpx.MockTransport(server))
    return generator


def test_prompt_formats() -> None:
    assert render_prompt(MESSAGES, "raw") == "Be brief.\n\nCapital?"
    assert render_prompt(MESSAGES, "plain") == "system: Be brief.\nuser: Capital?\nassistant: "
    assert render_prompt(MESSAGES, "chatml").endswith(
        "<|im_start|>user\nCapital?<|im_end|>\n<|im_start|>assistant\n"
    )
    template = "{% for m in messages %}[{{ m.role }}] {{ m.content }} {% endfor %}{% if add_generation_prompt %}>{% endif %}"
    assert render_prompt(MESSAGES, template) == "[system] Be brief. [user] Capital? >"


def test_segments_are_cut_token_by_token_with_logprobs() -> None:
    server = FakeServer()
    session = _generator(server, prompt_format="plain").open_session(PromptInput.chat(MESSAGES), seed=1)
    (sentence,) = session.generate("", [Sampling(0.0)], SegmentLimits(max_new_tokens=8))
    assert (sentence.text, sentence.num_tokens, sentence.finish) == ("Paris is nice.", 4, "boundary")
    assert sentence.token_logprobs == pytest.approx([-0.1, -0.2, -0.3, -0.4])
    # DeepConf token confidence from the returned top log-probabilities: -(v + v - 2) / 2
    assert sentence.token_confidence == pytest.approx([1.1, 1.2, 1.3, 1.4])
    assert server.bodies[0]["logprobs"] == 5
    assert server.bodies[0]["prompt"] == render_prompt(MESSAGES, "plain")
    (stopped,) = session.generate(
        "", [Sampling(0.7)], SegmentLimits(max_new_tokens=8, stop_strings=("nice",))
    )
    assert (stopped.text, stopped.finish, stopped.stop_string) == ("Paris is ", "stop_string", "nice")
    (whole,) = session.generate("So: ", [Sampling(0.0)], SegmentLimits(max_new_tokens=3, boundary="none"))
    assert (whole.text, whole.finish) == ("Paris is nice", "length")
    assert server.bodies[-1]["prompt"].endswith("assistant: So: ")
    assert len({b["seed"] for b in server.bodies}) == 3  # a fresh seed per request, from the job's seed


def test_echo_scores_continuations_and_the_prompt() -> None:
    session = _generator(FakeServer()).open_session(PromptInput.chat(MESSAGES))
    scores = session.score_continuations("The answer", [" is Paris", " is"])
    assert scores[0].tokens == 2 and scores[1].tokens == 1
    assert all(math.isfinite(s.mean_logprob) for s in scores)
    stats = session.prompt_statistics()
    assert stats.mean_top1_prob == pytest.approx(math.exp(-0.25))
    assert stats.mean_nll > 0


def test_a_server_without_logprobs_is_asked_once_then_never() -> None:
    server = FakeServer(refuse_logprobs=True)
    generator = _generator(server)
    session = generator.open_session(PromptInput.chat(MESSAGES))
    (first,) = session.generate("", [Sampling(0.0)], SegmentLimits(max_new_tokens=8))
    assert generator.logprobs is False
    assert (first.text, first.finish, first.token_logprobs) == ("Paris is nice.", "boundary", [])
    assert first.num_tokens == 4  # estimated from usage: 8 tokens for 25 characters, 14 of them kept
    session.generate("", [Sampling(0.0)], SegmentLimits(max_new_tokens=8))
    assert ["logprobs" in b for b in server.bodies] == [True, False, False]
    assert math.isnan(session.score_continuations("", ["x"])[0].mean_logprob)  # echo refused: neutral
    with pytest.raises(GenerationError, match="zscore"):
        session.prompt_statistics()


def test_retries_then_gives_up() -> None:
    server = FakeServer(fail_first=1)
    session = _generator(server, max_retries=1).open_session(PromptInput.chat(MESSAGES))
    assert (
        session.generate("", [Sampling(0.0)], SegmentLimits(max_new_tokens=2, boundary="none"))[0].text
        == "Paris is"
    )
    failing = _generator(FakeServer(fail_first=5), max_retries=1).open_session(PromptInput.chat(MESSAGES))
    with pytest.raises(GenerationError, match="after 2 attempt.*HTTP 503 after") as info:
        failing.generate("", [Sampling(0.0)], SegmentLimits(max_new_tokens=2))
    assert "busy" not in info.value.message, "the server's body is not echoed"


def test_a_raw_prompt_is_sent_as_is_whatever_the_chat_format() -> None:
    server = FakeServer()
    session = _generator(server, prompt_format="chatml").open_session(PromptInput.raw("Once upon"), seed=1)
    session.generate(" a", [Sampling(0.0)], SegmentLimits(max_new_tokens=2, boundary="none"))
    assert server.bodies[0]["prompt"] == "Once upon a"


class FakeChatServer:
    """Answers /v1/chat/completions like vLLM, continuing a final assistant message when asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.calls.append((request.url.path, body))
        tokens = ANSWER[: body["max_tokens"]]
        if request.url.path == "/v1/completions":  # a raw prompt
            return httpx.Response(
                200, json={"choices": [{"text": "".join(tokens), "finish_reason": "length"}]}
            )
        content = [
            {"token": t, "logprob": -0.1 * (i + 1), "top_logprobs": [{"token": t, "logprob": -0.1 * (i + 1)}]}
            for i, t in enumerate(tokens)
        ]
        choice = {
            "message": {"role": "assistant", "content": "".join(tokens)},
            "finish_reason": "length",
            "logprobs": {"content": content},
        }
        usage = {"prompt_tokens": 9, "completion_tokens": len(tokens)}
        return httpx.Response(200, json={"choices": [choice], "usage": usage})


def test_a_chat_prompt_goes_to_the_remote_chat_endpoint_by_default() -> None:
    server = FakeChatServer()
    session = _generator(server, prompt_format="chat").open_session(PromptInput.chat(MESSAGES), seed=1)
    (first,) = session.generate("", [Sampling(0.0)], SegmentLimits(max_new_tokens=8))
    assert (first.text, first.num_tokens, first.finish) == ("Paris is nice.", 4, "boundary")
    assert first.token_logprobs == pytest.approx([-0.1, -0.2, -0.3, -0.4])
    path, body = server.calls[0]
    assert path == "/v1/chat/completions"
    assert body["messages"] == [{"role": m.role, "content": m.content} for m in MESSAGES]
    assert "continue_final_message" not in body
    session.generate("Paris is nice.", [Sampling(0.0)], SegmentLimits(max_new_tokens=2, boundary="none"))
    _, body = server.calls[-1]
    assert body["messages"][-1] == {"role": "assistant", "content": "Paris is nice."}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    # no echo on the chat endpoint: continuation scores are neutral, none is asked for
    calls = len(server.calls)
    assert math.isnan(session.score_continuations("", ["x"])[0].mean_logprob)
    assert len(server.calls) == calls
    spec = ModelSpec(path="m", engine="openai", engine_options={"base_url": "http://fake/v1"})
    assert OpenAITextGenerator(spec).prompt_format == "chat"
    raw = _generator(server, prompt_format="chat").open_session(PromptInput.raw("Once"), seed=1)
    raw.generate("", [Sampling(0.0)], SegmentLimits(max_new_tokens=2, boundary="none"))
    assert server.calls[-1][0] == "/v1/completions" and server.calls[-1][1]["prompt"] == "Once"


def test_structured_output_is_passed_through_for_an_answer_in_one_piece() -> None:
    from ensemble_core.structured_output import StructuredOutput

    server = FakeServer()
    session = _generator(server).open_session(PromptInput.chat(MESSAGES))
    schema = StructuredOutput(kind="json_schema", schema_text='{"type": "object"}')
    limits = SegmentLimits(max_new_tokens=4, boundary="none", grammar=schema)
    session.generate("", [Sampling(0.0)], limits)
    assert server.bodies[-1]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
    }
    session.generate("", [Sampling(0.0)], SegmentLimits(4, grammar=StructuredOutput(kind="json_object")))
    assert server.bodies[-1]["response_format"] == {"type": "json_object"}
    # the server's grammar starts where its answer does: it cannot continue another's JSON
    with pytest.raises(GenerationError, match="one piece"):
        session.generate('{"a": ', [Sampling(0.0)], limits)
