"""What the worker stores must fit Postgres text and JSONB, which cannot hold U+0000."""

from __future__ import annotations

from workers.job_runner import _without_nul


def test_nul_characters_are_replaced_in_values_and_in_keys():
    # a top_logprobs entry maps token texts to log-probabilities: a model may emit a NUL token
    payload = {
        "text": "a\x00b",
        "logprobs": {"top_logprobs": [{"\x00": -1.5, " qu": -5.4}]},
        "n": [1, "\x00"],
    }
    clean = _without_nul(payload)
    assert clean == {
        "text": "a\ufffdb",
        "logprobs": {"top_logprobs": [{"\ufffd": -1.5, " qu": -5.4}]},
        "n": [1, "\ufffd"],
    }
    assert "\x00" not in repr(clean)
