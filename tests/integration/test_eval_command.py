"""`ensemblehub eval`: singles, oracle and methods in one table, on tiny models and a few items."""

from __future__ import annotations

import json
import subprocess
import sys

from evaluation.item_set import builtin_items
from tests.services import ROOT


def _eval(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ensemblehub.cli", "eval", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_export_items_writes_the_selected_split(tmp_path):
    target = tmp_path / "items.jsonl"
    out = _eval(
        "--split", "dev", "--kinds", "fact,multiple_choice", "--limit", "6", "--export-items", str(target)
    )
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(rows) == 6
    assert {r["split"] for r in rows} == {"dev"} and {r["kind"] for r in rows} == {"fact", "multiple_choice"}
    dev = {it.id: it for it in builtin_items("dev")}
    assert all(dev[r["id"]].answers == tuple(r["answers"]) for r in rows)


def test_eval_prints_singles_oracle_and_methods(tiny_model_dirs, tmp_path):
    specs = [
        {"path": str(tiny_model_dirs["llama"]), "name": "tiny-llama"},
        {"path": str(tiny_model_dirs["gpt2"]), "name": "tiny-gpt2"},
    ]
    items = tmp_path / "qa.jsonl"
    answers = tmp_path / "answers.jsonl"
    _eval("--split", "test", "--limit", "3", "--export-items", str(items))
    out = _eval(
        str(items),
        "--model_specs",
        json.dumps(specs),
        "--methods",
        "round_robin,response:majority_vote",
        "--method",
        'rr64={"aggregation_method": "round_robin", "max_rounds": 64}',
        "--max-tokens",
        "4",
        "--output",
        str(answers),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].split("|")[1:-1]]
    assert header[0] == "row" and "overall" in header and "generated tokens" in header
    labels = [line.split("|")[1].strip() for line in lines[1:]]
    assert labels == [
        "single: tiny-llama",
        "single: tiny-gpt2",
        "oracle (any member right)",
        "ensemble: round_robin",
        "ensemble: response:majority_vote",
        "ensemble: rr64",
    ]
    overall = header.index("overall")
    for line in lines[1:]:
        cells = [c.strip() for c in line.split("|")[1:-1]]
        assert cells[overall].endswith("/3)")
        assert int(cells[header.index("generated tokens")]) > 0
    written = [json.loads(line) for line in answers.read_text().splitlines() if "summary" not in line]
    assert len(written) == 3 * len(labels)
    # a response-level row keeps every whole answer it chose from, graded, for offline rules
    voted = [w for w in written if w["row"] == "ensemble: response:majority_vote"]
    assert all({c["model"] for c in w["candidates"]} == {"tiny-llama", "tiny-gpt2"} for w in voted)
    assert all(isinstance(c["correct"], bool) and "mean_logprob" in c for w in voted for c in w["candidates"])
    assert all(w["candidates"] is None for w in written if w["row"] == "ensemble: round_robin")
    # the report over the written answers prints the same table (oracle recomputed)
    report = subprocess.run(
        [sys.executable, "-m", "evaluation.report", str(answers)], cwd=ROOT, capture_output=True, text=True
    )
    assert report.returncode == 0, report.stderr
    assert [ln for ln in report.stdout.splitlines() if ln.startswith("|")] == [
        ln for ln in out.stdout.splitlines() if ln.startswith("|")
    ]
    # the oracle is right exactly where a member is
    by_row: dict[str, dict[str, bool]] = {}
    for w in written:
        by_row.setdefault(w["row"], {})[w["item_id"]] = w["correct"]
    for item, right in by_row["oracle (any member right)"].items():
        assert right == (by_row["single: tiny-llama"][item] or by_row["single: tiny-gpt2"][item])


def test_a_misspelled_method_fails_before_loading(tmp_path):
    out = _eval("--limit", "2", "--methods", "round_robn", "--model_specs", '[{"path": "/nonexistent"}]')
    assert out.returncode == 1
    assert "round_robn" in out.stderr
