"""Ensemble-Hub's pure ensemble library: several language models write one answer together.

Usable in a notebook with no server::

    from ensemble_core.bundled import default_ensemble_spec
    from ensemble_core.engine import run_ensemble
    from ensemble_core.pool import ModelPool
    from ensemble_core.spec import ChatMessage, GenerationRequest

    spec = default_ensemble_spec()
    request = GenerationRequest(messages=[ChatMessage(role="user", content="What is 2+2?")])
    result = run_ensemble(spec, spec.default_ensemble_config, request, ModelPool())

Importing this package (and ``spec``, ``methods``, ``errors``, ``result``) never imports torch;
only ``ensemble_core.backends`` does, when a model is loaded.
"""

__version__ = "0.1.0"
