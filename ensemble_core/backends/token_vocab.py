"""One vocabulary for several tokenizers: every token as the bytes it stands for.

Token-level ensembling averages next-token distributions of models whose vocabularies differ
(SmolLM2: 49k byte-level BPE tokens; Gemma 3: 262k SentencePiece-style tokens with byte
fallback). Token *strings* do not compare across tokenizers: byte-level BPE writes a leading
space as ``Ġ`` and a newline as ``Ċ`` (GPT-2's bytes-to-unicode map), SentencePiece writes a
space as ``▁`` and keeps bytes it cannot spell as ``<0xNN>`` tokens. Token *bytes* do compare:
``ĠParis``, ``▁Paris`` and a plain `` Paris`` all stand for ``b" Paris"``. So each token id is
mapped to its bytes and the union vocabulary is the set of distinct byte strings; a partial
UTF-8 character (a byte-level piece, or ``<0xE2>``) is a byte string like any other.

End-of-sequence ids of every model map to one shared key (``EOS_KEY``), so "stop here" is a
choice the models vote on together. Other special tokens are control, not text (the HF backend
decodes without them too): each gets a control key named after its content (shared by models
with the same special token) that adds no bytes to the answer.
Several ids of one tokenizer that stand for the same bytes (``\n`` and ``<0x0A>``) share one key;
the key gets the most probable spelling's probability (not the sum: then a model ensembled with
itself keeps its own greedy choice exactly), and that spelling is the id fed back to the model.

Cost: one pass over each vocabulary (about 0.3 s for 262k tokens), cached per tokenizer object.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

CONTROL_PREFIX = b"\x00\xff"  # starts no real token's bytes: keys of tokens that are not text
EOS_KEY = CONTROL_PREFIX + b"<eos>"
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_SP_SPACE = "\u2581"  # ▁


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (``Ġ`` is the space)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


BYTE_LEVEL_DECODE: dict[str, int] = {c: b for b, c in _bytes_to_unicode().items()}


def key_text(key: bytes) -> bytes:
    """The bytes a chosen key adds to the answer (none for control keys)."""
    return b"" if key.startswith(CONTROL_PREFIX) else key


def tokenizer_scheme(tokenizer: Any) -> str:
    """``byte_level`` (GPT-2/Llama-3/SmolLM style), ``sentencepiece`` (``▁`` + byte fallback) or ``other``."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return "other"
    decoder = json.dumps(json.loads(backend.to_str()).get("decoder"))
    if '"ByteLevel"' in decoder:
        return "byte_level"
    if "Metaspace" in decoder or _SP_SPACE in decoder or "ByteFallback" in decoder:
        return "sentencepiece"
    return "other"


def token_bytes(token: str, scheme: str) -> bytes | None:
    """The bytes one vocabulary string stands for; None when it cannot be mapped."""
    if scheme == "byte_level":
        try:
            return bytes(BYTE_LEVEL_DECODE[c] for c in token)
        except KeyError:
            return token.encode("utf-8")  # an added token written as plain text
    if scheme == "sentencepiece":
        match = _BYTE_FALLBACK.match(token)
        if match:
            return bytes([int(match.group(1), 16)])
        return token.replace(_SP_SPACE, " ").encode("utf-8")
    return token.encode("utf-8")


@dataclass
class TokenizerVocabulary:
    """Bytes of every id of one tokenizer, the shared key of each, and the id fed back per key."""

    keys: list[bytes]  # index: token id
    canonical: dict[bytes, int]  # key -> the id this model is fed for it
    spellings: dict[bytes, list[int]] = field(default_factory=dict)  # keys with several ids
    byte_ids: dict[int, int] = field(default_factory=dict)  # single byte value -> an id spelling it
    scheme: str = "other"

    @property
    def size(self) -> int:
        return len(self.keys)


def build_vocabulary(tokenizer: Any, eos_ids: set[int], logits_size: int) -> TokenizerVocabulary:
    """Map every id below ``logits_size`` to its key (ids past the tokenizer get an unusable key)."""
    scheme = tokenizer_scheme(tokenizer)
    size = min(len(tokenizer), logits_size)
    strings = tokenizer.convert_ids_to_tokens(list(range(size)))
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    added = {int(i): t.content for i, t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items()}
    keys: list[bytes] = []
    canonical: dict[bytes, int] = {}
    fallback: set[int] = set()
    byte_ids: dict[int, int] = {}
    for token_id, text in enumerate(strings):
        if token_id in eos_ids:
            key = EOS_KEY
        elif token_id in special:
            key = CONTROL_PREFIX + b"<special>" + added.get(token_id, text or "").encode("utf-8")
        elif token_id in added:
            key = token_bytes(added[token_id], scheme) or b""
        else:
            key = (token_bytes(text, scheme) if text is not None else None) or b""
        if not key:
            key = CONTROL_PREFIX + b"<unmapped:%d>" % token_id
        keys.append(key)
        if scheme == "sentencepiece" and _BYTE_FALLBACK.match(text or ""):
            fallback.add(token_id)
        # the id fed back for a key: the first one that is not a byte-fallback spelling
        if key not in canonical or (canonical[key] in fallback and token_id not in fallback):
            canonical[key] = token_id
        if len(key) == 1 and token_id not in special and (key[0] not in byte_ids or token_id in fallback):
            byte_ids[key[0]] = token_id
    for token_id in range(size, logits_size):  # embedding rows without a token (padding)
        keys.append(CONTROL_PREFIX + b"<pad-row:%d>" % token_id)
    spellings: dict[bytes, list[int]] = {}
    for token_id, key in enumerate(keys):
        if canonical.get(key, token_id) != token_id:
            spellings.setdefault(key, [canonical[key]]).append(token_id)
    return TokenizerVocabulary(
        keys=keys, canonical=canonical, spellings=spellings, byte_ids=byte_ids, scheme=scheme
    )


_CACHE: weakref.WeakKeyDictionary[Any, TokenizerVocabulary] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def vocabulary_for(owner: Any, tokenizer: Any, eos_ids: set[int], logits_size: int) -> TokenizerVocabulary:
    """``build_vocabulary`` once per loaded model (``owner``, e.g. the generator object)."""
    with _CACHE_LOCK:
        found = _CACHE.get(owner)
        if found is not None and found.size == logits_size:
            return found
    vocab = build_vocabulary(tokenizer, eos_ids, logits_size)
    with _CACHE_LOCK:
        _CACHE[owner] = vocab
    return vocab


@dataclass
class UnionVocabulary:
    """The distinct keys of several vocabularies and, per vocabulary, where each id lands."""

    keys: list[bytes]
    index: dict[bytes, int]
    maps: list[torch.Tensor]  # per vocabulary: LongTensor [its size] -> union position

    @property
    def size(self) -> int:
        return len(self.keys)

    def project(self, which: int, probs: torch.Tensor) -> torch.Tensor:
        """One model's distribution (its vocabulary) on the union vocabulary (max over spellings)."""
        out = torch.zeros(self.size, dtype=probs.dtype)
        return out.scatter_reduce_(0, self.maps[which], probs, reduce="amax")


def build_union(vocabularies: list[TokenizerVocabulary]) -> UnionVocabulary:
    keys: list[bytes] = []
    index: dict[bytes, int] = {}
    maps: list[torch.Tensor] = []
    for vocab in vocabularies:
        positions = []
        for key in vocab.keys:
            position = index.get(key)
            if position is None:
                position = index[key] = len(keys)
                keys.append(key)
            positions.append(position)
        maps.append(torch.tensor(positions, dtype=torch.long))
    return UnionVocabulary(keys=keys, index=index, maps=maps)


def split_utf8(data: bytes) -> tuple[str, bytes]:
    """``data`` as text up to its last complete character, and the incomplete bytes after it.

    Invalid bytes inside become U+FFFD; only a character cut off at the very end is held back.
    """
    for k in range(1, min(3, len(data)) + 1):
        if _incomplete_start(data[-k:]):
            return data[:-k].decode("utf-8", errors="replace"), data[-k:]
    return data.decode("utf-8", errors="replace"), b""


def _incomplete_start(tail: bytes) -> bool:
    """Whether ``tail`` is the beginning of a multi-byte UTF-8 character, cut short."""
    first = tail[0]
    if first >= 0xF0:
        need = 4
    elif first >= 0xE0:
        need = 3
    elif first >= 0xC0:
        need = 2
    else:
        return False
    return len(tail) < need and all(0x80 <= b < 0xC0 for b in tail[1:])
