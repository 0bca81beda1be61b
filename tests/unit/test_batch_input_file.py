"""Checking a batch input file line by line (no I/O): what is accepted, and errors that name
the line a user has to fix."""

from __future__ import annotations

import json

import pytest

from api.errors import ApiError
from api.services.file_service import parse_batch_file


def line(custom_id: str, url: str = "/v1/chat/completions", **body) -> str:
    body = body or {"messages": [{"role": "user", "content": "Hi"}]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def test_blank_lines_and_a_byte_order_mark_are_fine_and_numbers_follow_the_file():
    content = ("\ufeff" + line("a") + "\n\n" + line("b", "/v1/completions", prompt="Hi") + "\n").encode()
    parsed = parse_batch_file(content, max_lines=10)
    assert [(p.number, p.custom_id, p.url) for p in parsed] == [
        (1, "a", "/v1/chat/completions"),
        (3, "b", "/v1/completions"),
    ]
    assert parsed[1].body.prompt == "Hi"


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (line("s", stream=True, messages=[{"role": "user", "content": "x"}]), "line 2: body.stream"),
        (line("w", webhook_url="https://x", prompt="x"), "line 2: body.webhook_url"),
        (line("u", "/v1/embeddings"), "line 2: url '/v1/embeddings' is not supported"),
        (
            json.dumps({"custom_id": "m", "method": "GET", "url": "/v1/chat/completions", "body": {}}),
            "line 2: method",
        ),
        (line("t", messages=[], temperature=5), "line 2: body.temperature"),
    ],
)
def test_each_mistake_names_its_line(bad, expected):
    with pytest.raises(ApiError) as err:
        parse_batch_file((line("ok") + "\n" + bad + "\n").encode(), max_lines=10)
    assert err.value.status == 400 and err.value.code == "invalid_batch_file"
    assert expected in err.value.message


def test_empty_too_long_and_not_utf8_files_are_refused():
    for content, expected in [
        (b"\n\n", "holds no requests"),
        ((line("a") + "\n" + line("b")).encode(), "2 requests is more than the 1"),
        (b"\xff\xfe", "not UTF-8"),
    ]:
        with pytest.raises(ApiError, match=expected):
            parse_batch_file(content, max_lines=1)
