"""The union vocabulary: tokens of different tokenizers meet as the bytes they stand for."""

from __future__ import annotations

from pathlib import Path

import pytest

from ensemble_core.backends.token_vocab import (
    CONTROL_PREFIX,
    EOS_KEY,
    build_union,
    build_vocabulary,
    key_text,
    split_utf8,
    token_bytes,
)

from .real_models import gemma3_fixture  # noqa: F401  (fixture)


@pytest.mark.parametrize(
    ("token", "scheme", "expected"),
    [
        ("ĠParis", "byte_level", b" Paris"),
        ("Ċ", "byte_level", b"\n"),
        ("ĊĠ", "byte_level", b"\n "),
        ("Ã©", "byte_level", "é".encode()),
        ("Ã", "byte_level", b"\xc3"),  # half of "é": a partial character is a key like any other
        ("▁Paris", "sentencepiece", b" Paris"),
        ("▁▁", "sentencepiece", b"  "),
        ("<0x0A>", "sentencepiece", b"\n"),
        ("<0xE2>", "sentencepiece", b"\xe2"),
        ("Paris", "other", b"Paris"),
    ],
)
def test_token_strings_become_their_bytes(token: str, scheme: str, expected: bytes) -> None:
    assert token_bytes(token, scheme) == expected


def test_split_utf8_holds_back_only_a_cut_off_character() -> None:
    assert split_utf8("Paris é".encode()) == ("Paris é", b"")
    assert split_utf8(b"caf\xc3") == ("caf", b"\xc3")
    assert split_utf8("€".encode()[:2]) == ("", "€".encode()[:2])
    assert split_utf8(b"a\xffb") == ("a\ufffdb", b"")  # garbage inside is replaced, not held


def test_tiny_vocabularies_share_keys_and_eos(tiny_dirs: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    vocabs = []
    for arch in ("llama", "gpt2"):
        tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[arch])
        vocab = build_vocabulary(tokenizer, {tokenizer.eos_token_id}, len(tokenizer) + 3)
        assert vocab.scheme == "byte_level"
        assert vocab.keys[tokenizer.eos_token_id] == EOS_KEY
        assert vocab.keys[tokenizer.convert_tokens_to_ids("<pad>")].startswith(CONTROL_PREFIX)
        assert len(vocab.keys) == len(tokenizer) + 3  # embedding rows past the tokenizer are kept apart
        assert len(vocab.byte_ids) == 256  # byte-level BPE can spell any byte
        vocabs.append(vocab)
    union = build_union(vocabs)
    shared = set(vocabs[0].keys) & set(vocabs[1].keys)
    assert EOS_KEY in shared and b" the" in shared
    assert union.size == len(set(vocabs[0].keys) | set(vocabs[1].keys))
    # the same key lands on the same union position from both sides
    for key in (EOS_KEY, b" the"):
        a = int(union.maps[0][vocabs[0].canonical[key]])
        b = int(union.maps[1][vocabs[1].canonical[key]])
        assert a == b == union.index[key]
    assert key_text(EOS_KEY) == b"" and key_text(b" the") == b" the"


@pytest.mark.slow
def test_smollm2_and_gemma_tokens_meet(smollm2, gemma3) -> None:  # type: ignore[no-untyped-def]
    from ensemble_core.backends.hf_token import _logits_size
    from ensemble_core.backends.token_vocab import vocabulary_for

    sm = vocabulary_for(smollm2, smollm2.tokenizer, smollm2.eos_ids, _logits_size(smollm2.model))
    ge = vocabulary_for(gemma3, gemma3.tokenizer, gemma3.eos_ids, _logits_size(gemma3.model))
    assert (sm.scheme, ge.scheme) == ("byte_level", "sentencepiece")
    tok_sm, tok_ge = smollm2.tokenizer, gemma3.tokenizer
    assert sm.keys[tok_sm.convert_tokens_to_ids("ĠParis")] == ge.keys[tok_ge.convert_tokens_to_ids("▁Paris")]
    assert ge.keys[tok_ge.convert_tokens_to_ids("<0x0A>")] == b"\n"
    # "\n" has a proper token and a byte-fallback one: the proper one is fed back
    assert tok_ge.convert_ids_to_tokens(ge.canonical[b"\n"]) == "\n"
    assert ge.keys[tok_ge.convert_tokens_to_ids("<end_of_turn>")] == EOS_KEY == sm.keys[tok_sm.eos_token_id]
    union = build_union([sm, ge])
    assert len(ge.keys) < union.size < len(ge.keys) + len(sm.keys)
