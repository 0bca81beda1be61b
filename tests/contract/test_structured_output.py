"""Structured output through unchanged clients against the live stack: langchain-openai's
``with_structured_output`` in its three methods and ``bind_tools``, and the openai SDK's
``response_format``. The stack's tiny random models write no JSON by themselves: every valid
object below is the grammar's work, decoded by every member (the ensemble writes it in turns)."""

from __future__ import annotations

from typing import Literal

import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field

pytestmark = pytest.mark.usefixtures("show_logs_on_failure")

# enough rounds and tokens for the whole object, whoever writes each segment
ROOM = {"max_rounds": 40, "seed": 7}


class Verdict(BaseModel):
    """A yes/no verdict."""

    answer: Literal["yes", "no"]
    confident: bool
    score: int = Field(ge=0, le=9)


class GetWeather(BaseModel):
    """Get the weather of a city."""

    city: Literal["Paris", "Rome"]


class Loose(BaseModel):
    """JSON mode promises an object only: a schema that every object satisfies."""

    model_config = ConfigDict(extra="allow")

    note: str | None = None


def _chat(stack, model: str = "ensemble", **kwargs):  # type: ignore[no-untyped-def]
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model=model,
        base_url=stack.base_url + "/v1",
        api_key="unused",
        temperature=1.0,
        max_tokens=90,
        max_retries=0,
        timeout=120,
        extra_body=ROOM,
        **kwargs,
    )


@pytest.fixture(scope="module")
def warm(stack):  # type: ignore[no-untyped-def]
    import httpx

    body = {"model": "ensemble", "prompt": "Hi", "max_tokens": 1, "timeout": 300}
    assert httpx.post(stack.base_url + "/v1/completions", json=body, timeout=320).status_code == 200
    return stack


@pytest.mark.parametrize("model", ["ensemble", "tiny-gpt2"])
def test_langchain_structured_output_json_schema(warm, model):
    llm = _chat(warm, model).with_structured_output(Verdict, method="json_schema", strict=True)
    verdict = llm.invoke("Is Paris in France?")
    assert isinstance(verdict, Verdict)  # langchain parsed and validated it


def test_langchain_structured_output_function_calling(warm):
    llm = _chat(warm).with_structured_output(Verdict, method="function_calling", include_raw=True)
    out = llm.invoke("Is Paris in France?")
    assert out["parsing_error"] is None
    assert isinstance(out["parsed"], Verdict)
    raw = out["raw"]
    assert raw.content == "" and raw.tool_calls[0]["name"] == "Verdict"
    assert raw.response_metadata["finish_reason"] == "tool_calls"


def test_langchain_structured_output_json_mode(warm, tiny_model_dirs):
    from transformers import AutoTokenizer

    # JSON mode promises an object, whose keys a random model would never stop writing: "}"
    # is pushed (+100) wherever the grammar allows it, and the grammar allows it only after "{"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dirs["llama"])
    (close,) = tokenizer("}", add_special_tokens=False)["input_ids"]
    llm = _chat(warm, "tiny-llama", logit_bias={close: 100}).with_structured_output(
        Loose, method="json_mode", include_raw=True
    )
    out = llm.invoke("Describe Paris in JSON.")
    assert out["parsing_error"] is None and isinstance(out["parsed"], Loose)
    assert out["raw"].content == "{}"


def test_langchain_bind_tools_required_named_and_auto(warm):
    for choice in ("any", "GetWeather"):
        message = _chat(warm).bind_tools([GetWeather, Verdict], tool_choice=choice).invoke("Weather in Rome?")
        (call,) = message.tool_calls
        assert call["id"] and call["type"] == "tool_call"
        schema = {"GetWeather": GetWeather, "Verdict": Verdict}[call["name"]]
        schema.model_validate(call["args"])
        if choice == "GetWeather":
            assert call["name"] == "GetWeather"
    # auto: a call of one of the tools, or plain text that is no broken call
    for seed in (1, 2, 3):
        llm = _chat(warm).bind_tools([GetWeather])
        message = llm.invoke("Weather in Rome?", extra_body={**ROOM, "seed": seed})
        if message.tool_calls:
            GetWeather.model_validate(message.tool_calls[0]["args"])
        else:
            assert not str(message.content).lstrip().startswith("{")


def test_langchain_streams_a_tool_call(warm):
    llm = _chat(warm).bind_tools([GetWeather], tool_choice="GetWeather")
    chunks = list(llm.stream("Weather in Paris?"))
    message = chunks[0]
    for chunk in chunks[1:]:
        message = message + chunk
    (call,) = message.tool_calls
    assert call["name"] == "GetWeather"
    GetWeather.model_validate(call["args"])


def test_openai_sdk_response_format_and_bad_values(warm):
    client = openai.OpenAI(base_url=warm.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    parsed = client.beta.chat.completions.parse(
        model="ensemble",
        messages=[{"role": "user", "content": "Is Rome in Italy?"}],
        response_format=Verdict,
        max_tokens=90,
        extra_body=ROOM,
    )
    assert isinstance(parsed.choices[0].message.parsed, Verdict)
    # vLLM's guided_json
    guided = client.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": "Is Rome in Italy?"}],
        max_tokens=90,
        extra_body={**ROOM, "guided_json": Verdict.model_json_schema()},
    )
    Verdict.model_validate_json(guided.choices[0].message.content or "")
    for body, param in (
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function"}]}, "tools.0"),
        ({"guided_json": "true"}, "guided_json"),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"function": "f"}},
            "tool_choice",
        ),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
            "tool_choice",
        ),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model="ensemble", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, extra_body=body
            )
        assert caught.value.body["param"] == param


def test_a_conversation_with_a_tool_result_goes_on(warm):
    client = openai.OpenAI(base_url=warm.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    tools = [
        {"type": "function", "function": {"name": "GetWeather", "parameters": GetWeather.model_json_schema()}}
    ]
    first = client.chat.completions.create(
        model="ensemble",
        messages=[{"role": "user", "content": "Weather in Rome?"}],
        tools=tools,
        tool_choice="required",
        max_tokens=90,
        extra_body=ROOM,
    )
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls" and message.content is None
    (call,) = message.tool_calls
    GetWeather.model_validate_json(call.function.arguments)
    # the call and its result go back as OpenAI's turns; the answer is text (tool_choice none)
    follow = client.chat.completions.create(
        model="ensemble",
        messages=[
            {"role": "user", "content": "Weather in Rome?"},
            message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24 C"},
        ],
        tools=tools,
        tool_choice="none",
        max_tokens=6,
        extra_body=ROOM,
    )
    assert follow.choices[0].message.tool_calls is None
    assert isinstance(follow.choices[0].message.content, str)
    bad = [{"role": "assistant", "tool_calls": ["nope"]}, {"role": "user", "content": "x"}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="ensemble", messages=bad, max_tokens=4)
    assert caught.value.body["param"] == "messages.0.tool_calls"
