"""Loading Hugging Face models from a ``ModelSpec``: device, quantization, engine options.

Shared by the generator and the scorer backends so that every model honours the same options:
``device`` (``cpu``, ``cuda``, ``cuda:1``, ``auto``), ``quantization`` (``8bit``/``4bit`` through
bitsandbytes, GPU only) and ``engine_options`` keys ``attn_implementation`` (e.g. ``"eager"``),
``use_device_map`` (bool, load with ``device_map`` instead of ``.to(device)``), ``torch_dtype``
(see below), ``trust_remote_code`` (bool) and
``cpu_threads`` (int, torch intra-op threads for CPU models), and the cross-job batching knobs
``batch_across_jobs`` (bool, default true), ``batch_max_rows`` (int, default 128),
``batch_step_threads`` (int, torch threads the decode loop may use for a step of many rows;
default every core) and
``batch_window_ms`` (accepted, no longer used: the decode loop admits calls at every step) described in
``hf_batching``, and ``prefix_sharing_mb`` (number, default 256, 0 off: prompts' key/values kept
for later jobs that share a prefix with them, ``shared_prefixes``).

CPU threads: decoding one token of a small model is hundreds of tiny matrix products, where
OpenMP's fork/join costs more than a second thread gains, and on a busy machine spinning
threads that get descheduled make it several times slower (measured on the 2-core CI machine:
SmolLM2 64 tokens in 4.9 s with one thread, 22 s with two under load). So CPU models default to
half the cores (one on a 2-core machine), which also leaves a core for a second model running
concurrently. ``torch.set_num_threads`` is process-wide: the smallest value asked for wins.
The decode loop's steps of many rows are the exception (``batch_step_threads``): compute-bound
matrix products that split well over every core while the machine is otherwise idle, so the
loop measures both counts and uses the cheaper (``step_threads``).

Weight dtype (``torch_dtype``, an admin's engine option: a tenant's request never sets engine
options): ``"float32"``, ``"bfloat16"``, ``"float16"``; ``"checkpoint"``, the dtype the weights
are stored in (what transformers calls ``"auto"``); ``"auto"``, the faster dtype for the device,
as vLLM's ``dtype="auto"`` picks one: bfloat16 on a GPU that supports it (float16 on one that
does not) and on a CPU with AMX (``amx_bf16`` in /proc/cpuinfo), float32 on other CPUs (where
bfloat16 matrix products are emulated and slower), the checkpoint's dtype on other devices.
Unset, the checkpoint's dtype (float32 for the bundled models, which the evaluation used).
Measured for SmolLM2 on this project's AMX CPU (``python bench/dtype.py``, docs/benchmarks.md
"Weight dtype"): a bfloat16 decode step costs at most what a float32 one costs for one row and
about half for 8 to 64 rows, but most 32-token greedy continuations differ from float32's after
a dozen tokens, so the default stays the checkpoint's dtype and ``auto`` is an admin's choice;
torchao's int8 weight-only and int8 dynamic quantization were slower than bfloat16 at every row
count, so they are not offered.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ensemble_core.bundled import resolve_model_path
from ensemble_core.errors import ModelLoadError
from ensemble_core.spec import ModelSpec

KNOWN_ENGINE_OPTIONS = frozenset(
    {
        "attn_implementation",
        "use_device_map",
        "torch_dtype",
        "trust_remote_code",
        "cpu_threads",
        "batch_across_jobs",
        "batch_max_rows",
        "batch_step_threads",
        "batch_window_ms",
        "prefix_sharing_mb",
    }
)


def configure_cpu_threads(spec: ModelSpec) -> None:
    if spec.device != "cpu":
        return
    wanted = spec.engine_options.get("cpu_threads")
    if wanted is None:
        wanted = max(1, (os.cpu_count() or 2) // 2)
    if not isinstance(wanted, int) or wanted < 1:
        raise ModelLoadError(f"cpu_threads must be a positive integer, got {wanted!r}")
    if wanted < torch.get_num_threads():
        torch.set_num_threads(wanted)


def wide_step_threads(spec: ModelSpec) -> int:
    """Torch threads for the decode loop's passes of many rows: ``batch_step_threads``, or
    every core."""
    wanted = spec.engine_options.get("batch_step_threads", os.cpu_count() or 1)
    if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 1:
        raise ModelLoadError(f"batch_step_threads must be a positive integer, got {wanted!r}")
    return wanted


def check_engine_options(spec: ModelSpec) -> None:
    unknown = set(spec.engine_options) - KNOWN_ENGINE_OPTIONS
    if unknown:
        raise ModelLoadError(
            f"unknown engine_options {sorted(unknown)} for {spec.display_name!r}; "
            f"valid: {sorted(KNOWN_ENGINE_OPTIONS)}"
        )


def check_device(device: str) -> str:
    """Return the torch device string for ``device``; fail clearly when it does not exist."""
    if device in ("cpu", "auto"):
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} requested but no CUDA GPU is available")
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"device {device!r} requested but only {torch.cuda.device_count()} GPU(s) are visible"
            )
        return device
    if device == "mps" and torch.backends.mps.is_available():
        return device
    raise ModelLoadError(f"unknown or unavailable device {device!r}; use cpu, cuda, cuda:N or auto")


DTYPE_NAMES = ("float32", "bfloat16", "float16", "checkpoint", "auto")
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU feature flags of the first processor in ``cpuinfo`` (empty where unreadable)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def auto_dtype(device: str, flags: frozenset[str] | None = None) -> torch.dtype | None:
    """``torch_dtype: auto`` on ``device``: the faster dtype there (None: the checkpoint's).

    ``flags`` are the CPU's feature flags (read from /proc/cpuinfo when None).
    """
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device in ("cpu", "auto"):
        flags = cpu_flags() if flags is None else flags
        return torch.bfloat16 if "amx_bf16" in flags else torch.float32
    return None


def weight_dtype(spec: ModelSpec, flags: frozenset[str] | None = None) -> torch.dtype | str | None:
    """The ``dtype`` to load ``spec`` with: a torch dtype, ``"auto"`` (transformers' name for the
    checkpoint's dtype) or None (transformers' default, which is also the checkpoint's)."""
    name = spec.engine_options.get("torch_dtype")
    if name is None:
        return None
    if name == "checkpoint":
        return "auto"
    if name == "auto":
        return auto_dtype(spec.device, flags) or "auto"
    dtype = getattr(torch, str(name), None) if name in DTYPE_NAMES else None
    if not isinstance(dtype, torch.dtype):
        raise ModelLoadError(
            f"unknown torch_dtype {name!r} for {spec.display_name!r}; valid: {', '.join(DTYPE_NAMES)}"
        )
    return dtype


def load_kwargs(spec: ModelSpec) -> tuple[dict[str, Any], bool]:
    """``from_pretrained`` keyword arguments, and whether the model must be moved with ``.to``."""
    check_engine_options(spec)
    device = check_device(spec.device)
    kwargs: dict[str, Any] = {}
    dtype = weight_dtype(spec)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if spec.engine_options.get("attn_implementation"):
        kwargs["attn_implementation"] = spec.engine_options["attn_implementation"]
    if spec.engine_options.get("trust_remote_code"):
        kwargs["trust_remote_code"] = True
    use_device_map = bool(spec.engine_options.get("use_device_map", False)) or device == "auto"
    if spec.quantization is not None:
        if not device.startswith("cuda") and device != "auto":
            raise ModelLoadError(
                f"quantization {spec.quantization!r} needs bitsandbytes and a CUDA GPU; "
                f"{spec.display_name!r} is on {device!r}"
            )
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig as _BitsAndBytesConfig
        except ImportError as exc:
            raise ModelLoadError(
                f"quantization {spec.quantization!r} needs the bitsandbytes package: pip install bitsandbytes"
            ) from exc
        BitsAndBytesConfig: Any = _BitsAndBytesConfig  # noqa: N806 (untyped in transformers)
        if spec.quantization == "8bit":
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_compute_dtype=torch.float16
            )
        use_device_map = True
    if use_device_map:
        kwargs["device_map"] = "auto" if device == "auto" else {"": device}
    return kwargs, not use_device_map


def resolve_local_path(spec: ModelSpec, cache_dir: Path | None) -> str:
    path = resolve_model_path(spec.path, cache_dir)
    return str(path)


def from_pretrained(auto_class: Any, spec: ModelSpec, cache_dir: Path | None, **extra: Any) -> Any:
    """Load ``spec`` with ``auto_class`` and put it in eval mode on its device."""
    kwargs, move = load_kwargs(spec)
    kwargs.update(extra)
    configure_cpu_threads(spec)
    path = resolve_local_path(spec, cache_dir)
    try:
        model = auto_class.from_pretrained(path, **kwargs)
    except ModelLoadError:
        raise
    except Exception as exc:  # OSError, ValueError, RuntimeError ... from transformers
        raise ModelLoadError(f"could not load {spec.display_name!r} from {spec.path!r}: {exc}") from exc
    if move and spec.device != "cpu":
        model = model.to(spec.device)
    model.eval()
    return model


def load_tokenizer(spec: ModelSpec, cache_dir: Path | None) -> Any:
    from transformers import AutoTokenizer

    path = resolve_local_path(spec, cache_dir)
    try:
        return AutoTokenizer.from_pretrained(
            path, trust_remote_code=bool(spec.engine_options.get("trust_remote_code", False))
        )
    except Exception as exc:
        raise ModelLoadError(f"could not load the tokenizer of {spec.display_name!r}: {exc}") from exc


def input_device(model: Any) -> torch.device:
    device: torch.device = next(model.parameters()).device
    return device


def context_window(config: Any) -> int | None:
    """The most positions the model was built for, from its config (None if it names none).

    Past it a learned position table (GPT-2's ``wpe``) has no row to index and the forward
    pass fails; a rotary model runs on but outside what it was trained for. vLLM's
    ``max_model_len`` defaults to the same value."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length"):
        value = getattr(text_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
