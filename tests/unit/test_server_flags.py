"""Every flag of `python -m ensemblehub.api` reaches what it configures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from api.server_flags import FlagError, spec_from_args
from ensemblehub.api import build_parser
from tests.services import ROOT

GUIDE_FLAGS = [
    "--host",
    "--port",
    "--model_selection_method",
    "--ensemble_method",
    "--progressive_mode",
    "--length_thresholds",
    "--special_tokens",
    "--max_rounds",
    "--score_threshold",
    "--max_repeat",
    "--model_specs",
    "--vllm_enforce_eager",
    "--vllm_disable_chunked_prefill",
    "--hf_use_eager_attention",
    "--hf_disable_device_map",
    "--hf_use_8bit",
    "--hf_use_4bit",
]


def parse(*argv: str):
    return spec_from_args(build_parser().parse_args(list(argv)))


def test_help_lists_every_flag_of_the_guide():
    out = subprocess.run(
        [sys.executable, "-m", "ensemblehub.api", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0
    for flag in GUIDE_FLAGS:
        assert flag in out.stdout, flag


def test_no_flags_keeps_the_stored_config():
    assert parse() is None
    assert parse("--host", "0.0.0.0", "--port", "8080") is None


def test_ensemble_flags_set_the_default_config():
    spec = parse(
        "--model_selection_method",
        "all",
        "--ensemble_method",
        "progressive",
        "--progressive_mode",
        "length",
        "--length_thresholds",
        "50,100,200",
        "--special_tokens",
        "<step>,</think>",
        "--max_rounds",
        "5",
        "--score_threshold",
        "-2.0",
        "--max_repeat",
        "2",
    )
    config = spec.default_ensemble_config
    assert config.model_selection_method == "all"
    assert config.ensemble_method == "progressive"
    assert config.progressive_mode == "length"
    assert config.length_thresholds == [50, 100, 200]
    assert config.special_tokens == ["<step>", "</think>"]
    assert (config.max_rounds, config.score_threshold, config.max_repeat) == (5, -2.0, 2)


def test_model_specs_json_and_colon_forms_keep_the_device_index():
    spec = parse(
        "--model_specs",
        json.dumps([{"path": "m1", "engine": "hf"}, {"path": "m2", "engine": "vllm", "device": "cuda:1"}]),
    )
    assert [(m.path, m.engine, m.device) for m in spec.model_specs] == [
        ("m1", "hf", "cpu"),
        ("m2", "vllm", "cuda:1"),
    ]
    spec = parse("--model_specs", "org/a:hf:cuda:1,org/b:vllm:cuda:0")
    assert [(m.path, m.engine, m.device) for m in spec.model_specs] == [
        ("org/a", "hf", "cuda:1"),
        ("org/b", "vllm", "cuda:0"),
    ]


def test_hf_flags_become_load_arguments_of_hf_models_only():
    specs = json.dumps([{"path": "a", "engine": "hf"}, {"path": "b", "engine": "vllm", "device": "cuda:0"}])
    spec = parse("--model_specs", specs, "--hf_use_eager_attention", "--hf_disable_device_map")
    hf, vllm = spec.model_specs
    assert hf.engine_options == {"attn_implementation": "eager", "use_device_map": False}
    assert vllm.engine_options == {}


def test_vllm_flags_become_engine_options_of_vllm_models():
    specs = json.dumps([{"path": "a", "engine": "hf"}, {"path": "b", "engine": "vllm", "device": "cuda:0"}])
    spec = parse("--model_specs", specs, "--vllm_enforce_eager", "--vllm_disable_chunked_prefill")
    hf, vllm = spec.model_specs
    assert vllm.engine_options == {"enforce_eager": True, "enable_chunked_prefill": False}
    assert hf.engine_options == {}


@pytest.mark.parametrize("flag", ["--hf_use_8bit", "--hf_use_4bit"])
def test_quantization_on_cpu_fails_with_a_clear_message(flag):
    with pytest.raises(FlagError, match="CUDA GPU"):
        parse("--model_specs", "a:hf:cpu", flag)
    out = subprocess.run(
        [sys.executable, "-m", "ensemblehub.api", "--model_specs", "a:hf:cpu", flag],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "CUDA GPU" in out.stderr


def test_quantization_flag_sets_the_spec_for_gpu_models(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "bitsandbytes" else real(name, *a)
    )
    spec = parse("--model_specs", "a:hf:cuda:0", "--hf_use_4bit")
    assert spec.model_specs[0].quantization == "4bit"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ensemble_method", "typo"], "unknown aggregation method 'typo'; valid names"),
        (["--model_selection_method", "nope"], "unknown model_selection method 'nope'"),
        (["--length_thresholds", "50,x"], "--length_thresholds: 'x' is not a whole number"),
        (["--length_thresholds", "100,50"], "strictly ascending"),
        (["--max_rounds", "0"], "--max_rounds: Input should be greater than or equal to 1"),
        (["--hf_use_8bit", "--hf_use_4bit"], "exclude each other"),
        (
            ["--model_specs", '[{"path": "m", "engine": "openai", "engine_options": {"api_key": "sk-1"}}]'],
            "api_key_env",
        ),
    ],
)
def test_an_invalid_flag_or_combination_is_a_flag_error_with_the_message(argv, message):
    with pytest.raises(FlagError) as caught:
        parse(*argv)
    assert message in str(caught.value)


def test_the_server_exits_2_before_serving_on_an_invalid_flag():
    for argv, message in (
        (["--ensemble_method", "typo"], "unknown aggregation method"),
        (["--length_thresholds", "50,x"], "not a whole number"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "ensemblehub.api", "--port", "1", *argv],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 2, out.stderr
        assert message in out.stderr and "Traceback" not in out.stderr
        assert "Uvicorn running" not in out.stderr + out.stdout
