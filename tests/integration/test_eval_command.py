"""`ensemblehub eval`: the built-in set and the comparison table, on tiny models."""

from __future__ import annotations

import json
import subprocess
import sys

from evaluation.arithmetic_set import builtin_problems
from tests.services import ROOT


def test_builtin_set_is_deterministic_and_answers_are_right():
    items = builtin_problems(8, seed=3)
    assert items == builtin_problems(8, seed=3)
    assert items != builtin_problems(8, seed=4)
    import re

    # "X has A things and gets B more": the answer is A + B
    a, b = (int(n) for n in re.findall(r"\d+", items[0]["question"]))
    assert int(items[0]["answer"]) == a + b


def test_eval_prints_one_row_per_model_and_method(tiny_model_dirs, tmp_path):
    specs = [
        {"path": str(tiny_model_dirs["llama"]), "name": "tiny-llama"},
        {"path": str(tiny_model_dirs["gpt2"]), "name": "tiny-gpt2"},
    ]
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps(x) for x in builtin_problems(2)) + "\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ensemblehub.cli",
            "eval",
            str(data),
            "--model_specs",
            json.dumps(specs),
            "--methods",
            "round_robin,reward_based",
            "--max-tokens",
            "6",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert lines[0].split("|")[1].strip() == "row"
    labels = [line.split("|")[1].strip() for line in lines[1:]]
    assert labels == [
        "single: tiny-llama",
        "single: tiny-gpt2",
        "ensemble: round_robin",
        "ensemble: reward_based",
    ]
    for line in lines[1:]:
        cells = [c.strip() for c in line.split("|")[1:-1]]
        assert cells[1].endswith("/2)")
        assert int(cells[2]) > 0 and int(cells[3]) > 0
