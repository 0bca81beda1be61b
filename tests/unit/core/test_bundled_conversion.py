"""The bundled GGUF models as ``ensemble_core.bundled`` converts them, checked against references
that do not come from the conversion path: every saved tensor against the ``gguf`` package's own
dequantisation (through a name mapping written here), config.json against the GGUF metadata, the
tokenizer's BOS policy against ``tokenizer.ggml.add_bos_token``, and Gemma's logits against a
forward pass written here from the dequantised GGUF tensors. Converting takes a few minutes the
first time; later runs read the cache (the folder the service uses).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ensemble_core.bundled import BUNDLED_MODELS, _gguf_source, resolve_model_path

gguf = pytest.importorskip("gguf")

pytestmark = pytest.mark.slow

# GGUF block-level names -> transformers names, per architecture (llama.cpp's tensor names)
_LAYER_NAMES = {
    "gemma3": {
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
        "attn_norm": "input_layernorm",
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    },
    "llama": {
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    },
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


class GGUFFile:
    """One GGUF file read with the ``gguf`` package: metadata and dequantised tensors."""

    def __init__(self, path: Path) -> None:
        self.reader = gguf.GGUFReader(str(path))
        self.arch = str(self.field("general.architecture"))
        self.tensors = {t.name: t for t in self.reader.tensors}

    def field(self, key: str, default: object = None) -> object:
        found = self.reader.fields.get(key)
        return default if found is None else found.contents()

    def meta(self, key: str, default: object = None) -> object:
        return self.field(f"{self.arch}.{key}", default)

    def array(self, name: str) -> np.ndarray:
        """The tensor in transformers' (out, in) layout, as llama.cpp stored it."""
        t = self.tensors[name]
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        return np.array(values, dtype=np.float32).reshape(list(reversed(t.shape.tolist())))

    def torch(self, name: str) -> torch.Tensor:
        return torch.from_numpy(self.array(name))


def expected_hf_tensors(model: GGUFFile) -> Iterator[tuple[str, np.ndarray]]:
    """(transformers name, expected value) for every GGUF tensor, undoing what llama.cpp's
    converter did to the original checkpoint: Gemma's RMSNorm weights were stored as 1 + w
    (transformers' Gemma norm multiplies by 1 + w itself), llama's q/k rows were permuted for
    its interleaved rope."""
    heads, kv_heads = int(model.meta("attention.head_count")), int(model.meta("attention.head_count_kv"))
    for name in model.tensors:
        stem = name.removesuffix(".weight")
        if stem in _TOP_NAMES:
            hf = _TOP_NAMES[stem]
            kind = stem
        else:
            _, layer, kind = stem.split(".")
            hf = f"model.layers.{layer}.{_LAYER_NAMES[model.arch][kind]}"
        value = model.array(name)
        if model.arch == "gemma3" and kind.endswith("norm"):
            value = value - 1.0
        if model.arch == "llama" and kind in ("attn_q", "attn_k"):
            n = heads if kind == "attn_q" else kv_heads
            value = value.reshape(n, value.shape[0] // n // 2, 2, -1).swapaxes(1, 2).reshape(value.shape)
        yield hf + ".weight", value


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], GGUFFile]:
    """The GGUF a bundled model is converted from (Gemma's chunks assembled once per module)."""
    opened: dict[str, GGUFFile] = {}

    def get(name: str) -> GGUFFile:
        if name not in opened:
            opened[name] = GGUFFile(_gguf_source(BUNDLED_MODELS[name], tmp_path_factory.mktemp(name)))
        return opened[name]

    return get


@pytest.fixture(scope="module", params=["gemma3-270m", "smollm2"])
def converted(request: pytest.FixtureRequest, gguf_file: Callable[[str], GGUFFile]) -> tuple[Path, GGUFFile]:
    """(the converted folder the service loads, the GGUF it came from)."""
    return resolve_model_path(f"bundled:{request.param}"), gguf_file(request.param)


def test_every_tensor_matches_gguf_dequantisation(converted: tuple[Path, GGUFFile]) -> None:
    from safetensors import safe_open

    folder, model = converted
    with safe_open(str(folder / "model.safetensors"), framework="np") as saved:
        saved_names = set(saved.keys())
        expected_names = set()
        for hf_name, value in expected_hf_tensors(model):
            expected_names.add(hf_name)
            got = saved.get_tensor(hf_name).astype(np.float32)
            assert got.shape == value.shape, hf_name
            assert np.abs(got - value).max() <= 1e-6 * max(1.0, float(np.abs(value).max())), hf_name
    assert saved_names == expected_names  # nothing missing, nothing extra (lm_head stays tied)


def test_config_matches_gguf_metadata(converted: tuple[Path, GGUFFile]) -> None:
    from transformers import AutoConfig

    folder, model = converted
    config = AutoConfig.from_pretrained(str(folder))
    heads = int(model.meta("attention.head_count"))
    assert config.hidden_size == model.meta("embedding_length")
    assert config.num_hidden_layers == model.meta("block_count")
    assert config.intermediate_size == model.meta("feed_forward_length")
    assert config.num_attention_heads == heads
    assert config.num_key_value_heads == model.meta("attention.head_count_kv")
    assert config.max_position_embeddings == model.meta("context_length")
    assert config.rms_norm_eps == pytest.approx(model.meta("attention.layer_norm_rms_epsilon"))
    head_dim = int(model.meta("attention.key_length", config.hidden_size // heads))
    assert getattr(config, "head_dim", config.hidden_size // heads) == head_dim
    assert config.vocab_size == model.tensors["token_embd.weight"].shape[1]
    assert config.tie_word_embeddings == ("output.weight" not in model.tensors)
    rope = config.rope_parameters
    full_rope = rope["full_attention"] if "full_attention" in rope else rope
    assert full_rope["rope_theta"] == model.meta("rope.freq_base")
    if model.arch == "gemma3":
        assert config.sliding_window == model.meta("attention.sliding_window")
        # Gemma 3's published values, which llama.cpp hard-codes instead of storing them
        assert rope["sliding_attention"]["rope_theta"] == 10_000.0
        assert config.query_pre_attn_scalar == head_dim
        assert config.layer_types == [
            "full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
            for i in range(config.num_hidden_layers)
        ]
        assert config.final_logit_softcapping is None and config.attn_logit_softcapping is None


def test_tokenizer_adds_bos_as_the_gguf_says(converted: tuple[Path, GGUFFile]) -> None:
    from transformers import AutoTokenizer

    folder, model = converted
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    adds_bos = bool(model.field("tokenizer.ggml.add_bos_token", True))
    bos = int(model.field("tokenizer.ggml.bos_token_id"))
    assert tokenizer.bos_token_id == bos
    plain = tokenizer("Q: Hi\nA:", add_special_tokens=False)["input_ids"]
    assert tokenizer("Q: Hi\nA:")["input_ids"] == ([bos] if adds_bos else []) + plain
    # the service encodes chat-rendered text with add_special_tokens=False: the template's own
    # BOS is the only one
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    if adds_bos:
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        assert ids[0] == bos and ids.count(bos) == 1


# --- Gemma 3 written out from the GGUF tensors: the reference for the converted model's logits ---


def _rms(x: torch.Tensor, stored_weight: torch.Tensor, eps: float) -> torch.Tensor:
    # the GGUF stores Gemma's norm weight as 1 + w: multiply by it as stored
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * stored_weight


def _rope(x: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary position embedding on (heads, positions, dim), halves rotated (NEOX style)."""
    positions, dim = x.shape[1], x.shape[2]
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = torch.outer(torch.arange(positions, dtype=torch.float32), inv_freq)
    cos, sin = angles.cos(), angles.sin()
    first, second = x[..., : dim // 2], x[..., dim // 2 :]
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


def gemma3_reference_logits(model: GGUFFile, prompts: list[list[int]]) -> list[torch.Tensor]:
    """Next-token logits at every position of each prompt (each shorter than the sliding window)."""
    hidden_size = int(model.meta("embedding_length"))
    heads, kv_heads = int(model.meta("attention.head_count")), int(model.meta("attention.head_count_kv"))
    head_dim = int(model.meta("attention.key_length"))
    eps = float(model.meta("attention.layer_norm_rms_epsilon"))
    assert max(map(len, prompts)) < int(model.meta("attention.sliding_window"))
    embed = model.torch("token_embd.weight")
    states = [embed[torch.tensor(ids)] * math.sqrt(hidden_size) for ids in prompts]
    for layer in range(int(model.meta("block_count"))):
        w = {kind: model.torch(f"blk.{layer}.{kind}.weight") for kind in _LAYER_NAMES["gemma3"]}
        full = (layer + 1) % 6 == 0  # Gemma 3: five sliding-window layers, then one global
        base = float(model.meta("rope.freq_base")) if full else 10_000.0
        for i, h in enumerate(states):
            n = h.shape[0]
            x = _rms(h, w["attn_norm"], eps)
            q = (x @ w["attn_q"].T).view(n, heads, head_dim).transpose(0, 1)
            k = (x @ w["attn_k"].T).view(n, kv_heads, head_dim).transpose(0, 1)
            v = (x @ w["attn_v"].T).view(n, kv_heads, head_dim).transpose(0, 1)
            q = _rope(_rms(q, w["attn_q_norm"], eps), base)
            k = _rope(_rms(k, w["attn_k_norm"], eps), base)
            k, v = k.repeat_interleave(heads // kv_heads, 0), v.repeat_interleave(heads // kv_heads, 0)
            causal = torch.full((n, n), float("-inf")).triu(1)
            scores = q @ k.transpose(1, 2) / math.sqrt(head_dim) + causal  # query_pre_attn_scalar = head_dim
            attended = (scores.softmax(-1) @ v).transpose(0, 1).reshape(n, heads * head_dim)
            h = h + _rms(attended @ w["attn_output"].T, w["post_attention_norm"], eps)
            x = _rms(h, w["ffn_norm"], eps)
            mlp = torch.nn.functional.gelu(x @ w["ffn_gate"].T, approximate="tanh") * (x @ w["ffn_up"].T)
            states[i] = h + _rms(mlp @ w["ffn_down"].T, w["post_ffw_norm"], eps)
    norm = model.torch("output_norm.weight")
    return [_rms(h, norm, eps) @ embed.T for h in states]


FEW_SHOT = "Q: What is the capital of France?\nA: Paris\n\nQ: What is the capital of Japan?\nA:"


@pytest.fixture(scope="module")
def gemma() -> tuple[object, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = str(resolve_model_path("bundled:gemma3-270m"))
    return AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32
    ).eval()


def test_gemma_logits_match_a_forward_pass_from_the_gguf(gemma, gguf_file) -> None:  # type: ignore[no-untyped-def]
    tokenizer, loaded = gemma
    prompts = [tokenizer(p)["input_ids"] for p in (FEW_SHOT, "The capital of Germany is")]
    with torch.no_grad():
        wanted = gemma3_reference_logits(gguf_file("gemma3-270m"), prompts)
        for ids, want in zip(prompts, wanted, strict=True):
            got = loaded(torch.tensor([ids])).logits[0].float()
            assert (got - want).abs().max() <= 1e-3 * want.abs().max()
            assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_gemma_answers_a_few_shot_question(gemma) -> None:  # type: ignore[no-untyped-def]
    tokenizer, loaded = gemma
    ids = tokenizer(FEW_SHOT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = loaded.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert tokenizer.decode(out[0, ids.shape[1] :]).startswith(" Tokyo")
