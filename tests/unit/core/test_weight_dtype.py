"""``engine_options.torch_dtype``: ``auto`` picks by the device and the CPU's flags, an explicit
dtype is kept whatever the machine, and a bfloat16 model decodes greedily like transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from ensemble_core.backends.hf import HFTextGenerator
from ensemble_core.backends.hf_loading import auto_dtype, cpu_flags, weight_dtype
from ensemble_core.errors import ModelLoadError
from ensemble_core.pool import ModelPool
from ensemble_core.ports import Sampling, SegmentLimits
from ensemble_core.spec import ChatMessage, ModelSpec, PromptInput

AMX = "fpu vme sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"
NO_AMX = "fpu vme sse avx2 avx512f"


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / f"cpuinfo-{len(flags)}"
    lines = []
    for n in range(2):
        lines += [f"processor\t: {n}", "model name\t: Test CPU", f"flags\t\t: {flags}", ""]
    path.write_text("\n".join(lines))
    return path


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    assert "amx_bf16" in cpu_flags(_cpuinfo(tmp_path, AMX))
    assert "amx_bf16" not in cpu_flags(_cpuinfo(tmp_path, NO_AMX))
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_auto_is_bfloat16_on_an_amx_cpu_and_float32_elsewhere(tmp_path: Path) -> None:
    amx, plain = cpu_flags(_cpuinfo(tmp_path, AMX)), cpu_flags(_cpuinfo(tmp_path, NO_AMX))
    assert auto_dtype("cpu", amx) is torch.bfloat16
    assert auto_dtype("cpu", plain) is torch.float32
    assert auto_dtype("cpu", frozenset()) is torch.float32
    spec = ModelSpec(path="m", engine_options={"torch_dtype": "auto"})
    assert weight_dtype(spec, amx) is torch.bfloat16
    assert weight_dtype(spec, plain) is torch.float32


@pytest.mark.parametrize("name", ["float32", "bfloat16", "float16"])
def test_an_explicit_dtype_is_kept_whatever_the_cpu(tmp_path: Path, name: str) -> None:
    spec = ModelSpec(path="m", engine_options={"torch_dtype": name})
    for flags in (AMX, NO_AMX):
        assert weight_dtype(spec, cpu_flags(_cpuinfo(tmp_path, flags))) is getattr(torch, name)


def test_unset_and_checkpoint_load_the_stored_dtype() -> None:
    assert weight_dtype(ModelSpec(path="m")) is None
    assert weight_dtype(ModelSpec(path="m", engine_options={"torch_dtype": "checkpoint"})) == "auto"
    with pytest.raises(ModelLoadError, match="valid: float32, bfloat16"):
        weight_dtype(ModelSpec(path="m", engine_options={"torch_dtype": "int8"}))
    with pytest.raises(ModelLoadError, match="unknown torch_dtype"):
        weight_dtype(ModelSpec(path="m", engine_options={"torch_dtype": "Tensor"}))


def test_loading_with_auto_uses_this_machines_choice(tiny_dirs: dict[str, Path]) -> None:
    spec = ModelSpec(path=str(tiny_dirs["llama"]), engine_options={"torch_dtype": "auto"})
    generator = ModelPool().generator(spec)
    assert isinstance(generator, HFTextGenerator)
    assert generator.model.dtype == auto_dtype("cpu")
    checkpoint = ModelSpec(path=str(tiny_dirs["llama"]), engine_options={"torch_dtype": "checkpoint"})
    stored = ModelPool().generator(checkpoint)
    assert isinstance(stored, HFTextGenerator)
    assert stored.model.dtype == torch.float32  # tiny_models saves float32


def test_bfloat16_greedy_equals_transformers_generate(tiny_dirs: dict[str, Path]) -> None:
    spec = ModelSpec(path=str(tiny_dirs["llama"]), engine_options={"torch_dtype": "bfloat16"})
    generator = ModelPool().generator(spec)
    assert isinstance(generator, HFTextGenerator)
    assert generator.model.dtype == torch.bfloat16
    session = generator.open_session(PromptInput.chat([ChatMessage(role="user", content="What is 2+2?")]))
    limits = SegmentLimits(max_new_tokens=16, boundary="none", ignore_eos=True)
    ours = session.generate("", [Sampling(0.0)], limits)[0]

    reference = AutoModelForCausalLM.from_pretrained(str(tiny_dirs["llama"]), dtype=torch.bfloat16).eval()
    prompt = torch.tensor([session.prompt_ids])
    with torch.inference_mode():
        out = reference.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=16,
            min_new_tokens=16,
            do_sample=False,
        )
    assert ours.token_ids == out[0, prompt.shape[1] :].tolist()
    assert len(ours.token_logprobs) == 16
    assert all(lp <= 0.0 and lp == lp for lp in ours.token_logprobs)
