"""``ensemblehub calibrate PROMPTS``: reference statistics for ``zscore`` selection.

Loads each member model in this process, runs one forward pass per prompt (a text file, one
prompt per line, or JSONL with a ``prompt``/``input``/``question`` field), and prints the
per-model mean/std of perplexity and top-1 confidence (with ``--answer-tokens N`` also of the
DeepConf confidence of greedy answers, which ``cascade`` uses as its threshold). With ``--apply`` it stores them in a
new config version (``model_selection_params.reference_stats``, with ``zscore`` as the
default selector) through the running service.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_calibrate_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("calibrate", help="compute zscore reference statistics from a prompt file")
    p.add_argument("prompts", type=Path, help="one prompt per line, or JSONL with prompt/input/question")
    p.add_argument(
        "--model_specs", default=None, help="as for the API (default: the service's current config)"
    )
    p.add_argument(
        "--answer-tokens",
        type=int,
        default=0,
        help="also answer each prompt greedily (at most N tokens) and store the answers' DeepConf "
        "confidence (answer_confidence: zscore's answer_confidence_weight, cascade's threshold)",
    )
    p.add_argument("--apply", action="store_true", help="store the statistics as a new config version")
    p.add_argument("--url", default=None)
    p.add_argument("--api-key", default=None)


def read_prompts(path: Path) -> list[str]:
    prompts = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            item = json.loads(line)
            text = item.get("prompt") or item.get("input") or item.get("question")
            if not text:
                raise ValueError(f"{path}: a JSON line needs prompt, input or question")
            prompts.append(str(text))
        else:
            prompts.append(line.strip())
    if not prompts:
        raise ValueError(f"{path} has no prompts")
    return prompts


def run_calibrate(args: argparse.Namespace) -> int:
    from api.server_flags import parse_model_specs
    from ensemble_core.pool import ModelPool
    from ensemble_core.selection.zscore import calibrate
    from ensemblehub.client_commands import ClientError, _call, _client

    try:
        prompts = read_prompts(args.prompts)
        client = _client(args)
        if args.model_specs:
            specs = parse_model_specs(args.model_specs)
        else:
            specs = [_spec(m) for m in _call(client, "GET", "/v1/ensemble/config")["model_specs"]]
        stats = calibrate(specs, prompts, ModelPool(), answer_tokens=max(args.answer_tokens, 0))
        print(json.dumps(stats, indent=2))
        if args.apply:
            current = _call(client, "GET", "/v1/ensemble/config")["default_ensemble_config"]
            params: dict[str, Any] = dict(current.get("model_selection_params") or {})
            params["reference_stats"] = stats
            version = _call(
                client,
                "POST",
                "/v1/ensemble/config",
                # the statistics are zscore's parameters, so the default selector becomes zscore
                json={
                    "default_ensemble_config": {
                        "model_selection_method": "zscore",
                        "model_selection_params": params,
                    },
                    "note": f"zscore calibrated on {len(prompts)} prompts",
                },
            )
            print(f"stored config version {version['version']}", file=sys.stderr)
    except (ClientError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _spec(data: dict[str, Any]):  # type: ignore[no-untyped-def]
    from ensemble_core.spec import ModelSpec

    return ModelSpec.model_validate(data)
