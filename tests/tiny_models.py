"""Tiny random transformers models with their own tokenizers, built offline in milliseconds.

Real model classes (Llama, GPT-2), real tokenizers (byte-level BPE trained here on a small
corpus), real chat templates: everything the HF backend does with SmolLM2 it does with these,
only the weights are random. Two architectures with two different vocabularies exercise
cross-tokenizer hand-over. (Not ``qwen2``: it silently swaps in its own tokenizer.)
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]

_CORPUS = [
    "What is 2+2? The answer is 4.",
    "The capital of France is Paris. Paris is a city.",
    "Machine learning models learn from data. They make predictions.",
    "Solve the equation step by step. First, subtract three. Then divide by two.",
    "Quantum computing uses qubits. A qubit can be in superposition.",
    "You are a helpful assistant. Answer briefly and clearly.",
    "One, two, three, four, five, six, seven, eight, nine, ten.",
    "The quick brown fox jumps over the lazy dog.\nNew line here.\n",
]


def _train_tokenizer(vocab_size: int, seed: int, extra_special: tuple[str, ...] = (), bos: bool = False):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS + list(extra_special),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # the seed shifts the corpus so that two tokenizers end up with different merges
    corpus = _CORPUS[seed % len(_CORPUS) :] + _CORPUS[: seed % len(_CORPUS)]
    tok.train_from_iterator(corpus * (2 + seed), trainer=trainer)
    if bos:  # plain text gets a BOS in front, as Llama's and Gemma's tokenizers do
        bos_id = tok.token_to_id("<|endoftext|>")
        tok.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", pair="<|endoftext|> $A $B", special_tokens=[("<|endoftext|>", bos_id)]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<pad>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _config(  # type: ignore[no-untyped-def]
    arch: str,
    vocab_size: int,
    tokenizer,
    num_labels: int | None = None,
    max_positions: int = 2048,
    sliding_window: int = 8,
):
    from transformers import GPT2Config, LlamaConfig

    common = {
        "vocab_size": vocab_size,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if num_labels is not None:
        common["num_labels"] = num_labels
    if arch == "llama":
        return LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=32,
            max_position_embeddings=max_positions,
            tie_word_embeddings=False,
            **common,
        )
    if arch == "gpt2":
        return GPT2Config(n_embd=64, n_layer=2, n_head=2, n_positions=max_positions, **common)
    if arch == "gemma3":  # sliding-window attention (default window 8) beside full attention, like Gemma 3
        from transformers import Gemma3TextConfig

        return Gemma3TextConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=32,
            sliding_window=sliding_window,
            layer_types=["sliding_attention", "full_attention"],
            max_position_embeddings=max_positions,
            **common,
        )
    raise ValueError(f"unknown tiny arch {arch!r}; use 'llama', 'gpt2' or 'gemma3'")


def build_tiny_model(
    directory: Path,
    arch: str = "llama",
    vocab_seed: int = 0,
    *,
    vocab_size: int = 400,
    seed: int = 0,
    bos: bool = False,
    max_positions: int = 2048,
    sliding_window: int = 8,
) -> Path:
    """Save a tiny causal LM + tokenizer (with chat template) in ``directory``; returns it.
    ``bos``: the tokenizer puts a BOS in front of plain text; ``max_positions``: its context
    window; ``sliding_window``: the window of a ``gemma3`` model's sliding layers.

    Idempotent: an existing folder is reused."""
    import torch
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    if (directory / "config.json").exists():
        return directory
    tokenizer = _train_tokenizer(vocab_size, vocab_seed, bos=bos)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        _config(arch, len(tokenizer), tokenizer, max_positions=max_positions, sliding_window=sliding_window)
    )
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_tiny_reward_model(
    directory: Path, arch: str = "llama", vocab_seed: int = 0, *, num_labels: int = 1, seed: int = 0
) -> Path:
    """A tiny ``AutoModelForSequenceClassification`` (one logit by default: a reward model;
    ``num_labels=2`` gives a process-reward-model shape)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    directory = Path(directory)
    if (directory / "config.json").exists():
        return directory
    tokenizer = _train_tokenizer(400, vocab_seed)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(
        _config(arch, len(tokenizer), tokenizer, num_labels=num_labels)
    )
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_tiny_prm(
    directory: Path,
    arch: str = "llama",
    vocab_seed: int = 0,
    *,
    step_separator: str = "<extra_0>",
    seed: int = 0,
) -> Path:
    """A tiny process reward model: ``AutoModelForTokenClassification`` with two labels
    (bad, good) and a tokenizer that has ``step_separator`` as a special token, the shape of
    Qwen2.5-Math-PRM."""
    import torch
    from transformers import AutoModelForTokenClassification

    directory = Path(directory)
    if (directory / "config.json").exists():
        return directory
    tokenizer = _train_tokenizer(400, vocab_seed, (step_separator,))
    torch.manual_seed(seed)
    model = AutoModelForTokenClassification.from_config(
        _config(arch, len(tokenizer), tokenizer, num_labels=2)
    )
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
