"""A tiny random causal LM whose tokenizer is SentencePiece-style, like Gemma's.

``tests.tiny_models`` trains byte-level BPE tokenizers; with its small corpus every
``vocab_seed`` ends with the same 400 tokens, so two of them do not make a cross-vocabulary
test. This tokenizer differs in every way that matters for token-level ensembling: spaces are
``▁``, bytes it cannot spell are ``<0xNN>`` byte-fallback tokens, its merges and ids differ.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.tiny_models import _CORPUS, CHAT_TEMPLATE, SPECIAL_TOKENS, _config


def _sentencepiece_tokenizer(vocab_size: int):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.normalizer = normalizers.Replace(" ", "▁")
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=[])
    trainer_tok.train_from_iterator([line.lower() for line in _CORPUS] * 3, trainer=trainer)
    trained = json.loads(trainer_tok.to_str())
    # ids: special tokens, then the 256 byte-fallback tokens, then the learned pieces
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for piece in sorted(trained["model"]["vocab"], key=trained["model"]["vocab"].get):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["model"]["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, fuse_unk=False))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<pad>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_sentencepiece_model(directory: Path, arch: str = "llama", *, seed: int = 7) -> Path:
    """Save a tiny causal LM with a SentencePiece-style tokenizer in ``directory`` (idempotent)."""
    import torch
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    if (directory / "config.json").exists():
        return directory
    tokenizer = _sentencepiece_tokenizer(300)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(arch, len(tokenizer), tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
