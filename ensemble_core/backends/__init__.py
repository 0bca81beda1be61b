"""Backends: the only modules of ``ensemble_core`` that import torch, transformers or vllm.

Nothing here is imported by ``ensemble_core`` itself at import time; the pool and the scorer
table name these classes as ``"module:Class"`` strings and import them on first use.
"""

GENERATOR_BACKENDS: dict[str, str] = {
    "hf": "ensemble_core.backends.hf:HFTextGenerator",
    "vllm": "ensemble_core.backends.vllm:VLLMTextGenerator",  # needs the optional extra `vllm`
    "openai": "ensemble_core.backends.openai_remote:OpenAITextGenerator",  # any /v1/completions server
}
