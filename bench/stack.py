"""A real local stack for benchmarks: fresh Postgres database, private Redis db, one worker
process, the API over HTTP. Reuses the test harness so benchmarks and tests start the same way."""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests import services


@dataclass
class BenchStack:
    base_url: str
    env: dict[str, str]
    log_dir: Path


@contextmanager
def running_stack(
    model_specs: list[dict] | None,
    flags: Sequence[str] = (),
    workers: int = 1,
    worker_env: dict[str, str] | None = None,
    api_workers: int = 1,
) -> Iterator[BenchStack]:
    """``model_specs=None``: the bundled default ensemble (no ``--model_specs`` flag).
    ``api_workers``: API processes on the one port (``--workers``)."""
    with ExitStack() as stack:
        db_url = stack.enter_context(services.migrated_database())
        broker = stack.enter_context(services.private_redis_db())
        log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ehub-bench-")))
        env = services.service_env(db_url, broker)
        procs = [
            services.start_worker({**env, **(worker_env or {})}, log_dir, name=f"w{i}")
            for i in range(workers)
        ]
        spec_flags = ["--model_specs", json.dumps(model_specs)] if model_specs is not None else []
        api_flags = ["--workers", str(api_workers)] if api_workers > 1 else []
        api, base = services.start_api(env, log_dir, [*spec_flags, *flags, *api_flags])
        procs.append(api)
        stack.callback(lambda: [p.stop() for p in procs])
        services.wait_for_worker(base, procs[0])
        yield BenchStack(base, env, log_dir)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": statistics.median(values),
        "p95": percentile(values, 0.95),
        "p99": percentile(values, 0.99),
    }


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)
