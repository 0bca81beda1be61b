"""The guide's command-line flags of ``python -m ensemblehub.api``, turned into a spec.

Every flag reaches what it configures: ensemble flags become the default config of a new
config version, model flags become load arguments inside each model spec (so workers, which
load the models, see them too).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from typing import Any

from pydantic import ValidationError

from ensemble_core.bundled import default_ensemble_spec
from ensemble_core.methods import overlay_config, validate_config
from ensemble_core.spec import EnsembleConfig, EnsembleSpec, ModelSpec

ENSEMBLE_FLAGS = (
    "model_selection_method",
    "ensemble_method",
    "progressive_mode",
    "length_thresholds",
    "special_tokens",
    "max_rounds",
    "score_threshold",
    "max_repeat",
)
MODEL_FLAGS = (
    "model_specs",
    "vllm_enforce_eager",
    "vllm_disable_chunked_prefill",
    "hf_use_eager_attention",
    "hf_disable_device_map",
    "hf_use_8bit",
    "hf_use_4bit",
)


class FlagError(ValueError):
    """A flag value that cannot work (bad JSON, 8-bit on a CPU-only setup, ...)."""


def add_server_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    server = parser.add_argument_group("server")
    server.add_argument("--host", default=None, help="address to bind (default: 127.0.0.1)")
    server.add_argument("--port", type=int, default=None, help="port (default: 8000)")
    server.add_argument(
        "--workers",
        type=int,
        default=1,
        help="API processes sharing the port, e.g. one per core (default: 1; needs Postgres and Redis)",
    )

    ens = parser.add_argument_group("ensemble (sets the default config version)")
    ens.add_argument(
        "--model_selection_method", default=None, help="zscore (default), all, random, llm_blender"
    )
    ens.add_argument(
        "--ensemble_method", default=None, help="simple (default), progressive, random, loop, ..."
    )
    ens.add_argument(
        "--progressive_mode",
        default=None,
        choices=["length", "token", "mixed"],
        help="progressive switch rule (default: mixed)",
    )
    ens.add_argument(
        "--length_thresholds", default=None, help="comma-separated token counts, e.g. 50,100,200"
    )
    ens.add_argument(
        "--special_tokens", default=None, help="comma-separated hand-over tokens, e.g. '<step>,</think>'"
    )
    ens.add_argument("--max_rounds", type=int, default=None, help="maximum rounds (default: 10)")
    ens.add_argument(
        "--score_threshold",
        type=float,
        default=None,
        help="resample rounds scoring below this (default: -1.5)",
    )
    ens.add_argument(
        "--max_repeat",
        type=int,
        default=None,
        help="stop after the same segment this many times (default: 3)",
    )

    models = parser.add_argument_group("models")
    models.add_argument(
        "--model_specs",
        default=None,
        help='JSON list of model specs, or comma-separated "path:engine:device" (default: the bundled SmolLM2)',
    )
    models.add_argument(
        "--vllm_enforce_eager", action="store_true", help="vLLM: disable CUDA graphs (enforce_eager)"
    )
    models.add_argument(
        "--vllm_disable_chunked_prefill", action="store_true", help="vLLM: enable_chunked_prefill=False"
    )
    models.add_argument(
        "--hf_use_eager_attention", action="store_true", help="transformers: attn_implementation='eager'"
    )
    models.add_argument(
        "--hf_disable_device_map", action="store_true", help="transformers: load without device_map"
    )
    models.add_argument(
        "--hf_use_8bit", action="store_true", help="transformers: 8-bit quantization (bitsandbytes, GPU)"
    )
    models.add_argument(
        "--hf_use_4bit", action="store_true", help="transformers: 4-bit quantization (bitsandbytes, GPU)"
    )
    return parser


def parse_model_specs(text: str) -> list[ModelSpec]:
    text = text.strip()
    try:
        if text.startswith("["):
            items = json.loads(text)
            if not isinstance(items, list) or not items:
                raise FlagError("--model_specs JSON must be a non-empty list")
            return [
                ModelSpec.model_validate(item) if isinstance(item, dict) else ModelSpec.parse(str(item))
                for item in items
            ]
        return [ModelSpec.parse(part) for part in text.split(",") if part.strip()]
    except (json.JSONDecodeError, ValueError) as exc:
        raise FlagError(f"--model_specs: {exc}") from exc


def spec_from_args(args: argparse.Namespace) -> EnsembleSpec | None:
    """The spec the flags describe, or None when no ensemble or model flag was given.

    The spec is validated as completely as a config version posted to the API (method names,
    their parameters, no stored keys), so a bad flag stops the server with a message before
    it serves: never a traceback, never the previous version served in silence."""
    try:
        spec = _spec_from_args(args)
        if spec is not None:
            validate_config(spec.default_ensemble_config)
            _refuse_stored_keys(spec)
        return spec
    except FlagError:
        raise
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"] else str(e["msg"])
            for e in exc.errors()[:5]
        )
        raise FlagError(problems) from exc
    except ValueError as exc:  # ConfigError: an unknown method or parameter, with the valid names
        raise FlagError(str(exc)) from exc


def _refuse_stored_keys(spec: EnsembleSpec) -> None:
    for model in spec.model_specs:
        if "api_key" in model.engine_options:
            raise FlagError(
                f"--model_specs: {model.display_name!r} has engine_options.api_key; keys are not stored in "
                "config versions: export it in the workers' environment and give engine_options.api_key_env"
            )


def _int_list(flag: str, text: str) -> list[int]:
    values = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            values.append(int(part))
        except ValueError:
            raise FlagError(f"--{flag}: {part!r} is not a whole number (e.g. 50,100,200)") from None
    return values


def _spec_from_args(args: argparse.Namespace) -> EnsembleSpec | None:
    # `is` and not `in (None, False)`: 0 == False, and --max_rounds 0 is given (and invalid)
    given = {
        name
        for name in ENSEMBLE_FLAGS + MODEL_FLAGS
        if getattr(args, name, None) is not None and getattr(args, name, None) is not False
    }
    if not given:
        return None
    if args.hf_use_8bit and args.hf_use_4bit:
        raise FlagError("--hf_use_8bit and --hf_use_4bit exclude each other; give one")
    base = default_ensemble_spec()
    models = parse_model_specs(args.model_specs) if args.model_specs else list(base.model_specs)
    models = [_apply_model_flags(m, args) for m in models]

    flags: dict[str, Any] = {}
    for name in (
        "model_selection_method",
        "ensemble_method",
        "progressive_mode",
        "max_rounds",
        "score_threshold",
        "max_repeat",
    ):
        value = getattr(args, name)
        if value is not None:
            flags[name] = value
    # a method flag brings its own level and clears the base's aggregation_method (overlay_config)
    config = overlay_config(base.default_ensemble_config.model_dump(), flags)
    if args.length_thresholds:
        config["length_thresholds"] = _int_list("length_thresholds", args.length_thresholds)
    if args.special_tokens:
        config["special_tokens"] = [x.strip() for x in args.special_tokens.split(",") if x.strip()]
    return EnsembleSpec(model_specs=models, default_ensemble_config=EnsembleConfig.model_validate(config))


def _apply_model_flags(spec: ModelSpec, args: argparse.Namespace) -> ModelSpec:
    options = dict(spec.engine_options)
    quantization = spec.quantization
    if spec.engine == "hf":
        if args.hf_use_eager_attention:
            options["attn_implementation"] = "eager"
        if args.hf_disable_device_map:
            options["use_device_map"] = False
        if args.hf_use_8bit or args.hf_use_4bit:
            quantization = "4bit" if args.hf_use_4bit else "8bit"
            _require_gpu_quantization(spec, quantization)
    elif spec.engine == "vllm":
        if args.vllm_enforce_eager:
            options["enforce_eager"] = True
        if args.vllm_disable_chunked_prefill:
            options["enable_chunked_prefill"] = False
    return spec.model_copy(update={"engine_options": options, "quantization": quantization})


def _require_gpu_quantization(spec: ModelSpec, quantization: str) -> None:
    if not spec.device.startswith(("cuda", "auto")):
        raise FlagError(
            f"--hf_use_{quantization} needs a CUDA GPU (bitsandbytes), but model {spec.display_name!r} "
            f"is on device {spec.device!r}; give it a cuda device in --model_specs or drop the flag"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise FlagError(f"--hf_use_{quantization} needs the bitsandbytes package: pip install bitsandbytes")
