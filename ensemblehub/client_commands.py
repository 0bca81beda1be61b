"""Client commands of the ``ensemblehub`` CLI: talk to a running service over HTTP.

    ensemblehub batch submit FILE.jsonl [--wait] [--output results.jsonl]
    ensemblehub jobs get JOB_ID
    ensemblehub config show | set --file spec.json | set --set key=value ... | history

The service URL comes from ``--url`` or ``ENSEMBLEHUB_URL`` (default http://127.0.0.1:8000),
the API key from ``--api-key`` or ``ENSEMBLEHUB_API_KEY``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


class ClientError(RuntimeError):
    pass


def add_client_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--url", default=None, help=f"service URL (default: $ENSEMBLEHUB_URL or {DEFAULT_URL})"
        )
        p.add_argument("--api-key", default=None, help="API key (default: $ENSEMBLEHUB_API_KEY)")
        return p

    batch = sub.add_parser("batch", help="submit and follow batch jobs").add_subparsers(
        dest="batch_command", required=True
    )
    submit = common(batch.add_parser("submit", help="submit a JSONL file of examples as one batch"))
    submit.add_argument(
        "file", type=Path, help="JSON lines: {instruction?, input, ensemble_config?, max_tokens?}"
    )
    submit.add_argument("--wait", action="store_true", help="follow the batch with a live progress bar")
    submit.add_argument(
        "--output", type=Path, default=None, help="where to write the results (JSONL; with --wait)"
    )
    submit.add_argument("--max-tokens", type=int, default=None)
    submit.add_argument("--poll", type=float, default=1.0, help="seconds between progress updates")

    jobs = sub.add_parser("jobs", help="inspect jobs").add_subparsers(dest="jobs_command", required=True)
    get = common(jobs.add_parser("get", help="show one job"))
    get.add_argument("job_id")

    config = sub.add_parser("config", help="show and change the ensemble configuration").add_subparsers(
        dest="config_command", required=True
    )
    common(config.add_parser("show", help="the current config version"))
    common(config.add_parser("history", help="every config version, newest first"))
    cset = common(config.add_parser("set", help="store a new config version"))
    cset.add_argument(
        "--file", type=Path, default=None, help="JSON with model_specs and/or default_ensemble_config"
    )
    cset.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one default_ensemble_config field (VALUE is JSON, or a plain string)",
    )
    cset.add_argument("--note", default=None)


def run_client_command(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    client = _client(args)
    try:
        if args.command == "batch":
            return batch_submit(client, args, out)
        if args.command == "jobs":
            return _print_json(_call(client, "GET", f"/v1/jobs/{args.job_id}"), out)
        if args.config_command == "show":
            return _print_json(_call(client, "GET", "/v1/ensemble/config"), out)
        if args.config_command == "history":
            return config_history(client, out)
        return config_set(client, args, out)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()


def _client(args: argparse.Namespace) -> httpx.Client:
    url = args.url or os.environ.get("ENSEMBLEHUB_URL") or DEFAULT_URL
    key = args.api_key or os.environ.get("ENSEMBLEHUB_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=60)


def _call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    try:
        resp = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach {client.base_url}: {exc}") from exc
    if resp.status_code >= 400:
        try:
            err = resp.json()["error"]
            raise ClientError(f"{resp.status_code} {err.get('code')}: {err.get('message')}")
        except (ValueError, KeyError, TypeError):
            raise ClientError(f"{resp.status_code}: {resp.text[:300]}") from None
    return resp.json()


def _print_json(data: Any, out: TextIO) -> int:
    out.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return 0


def read_examples(path: Path) -> list[dict[str, Any]]:
    examples = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ClientError(f"{path}:{number}: not JSON: {exc}") from exc
        if "input" not in item and "prompt" in item:
            item["input"] = item.pop("prompt")
        if "input" not in item:
            raise ClientError(f"{path}:{number}: each line needs an 'input' (or 'prompt')")
        examples.append(
            {k: item[k] for k in ("instruction", "input", "ensemble_config", "max_tokens") if k in item}
        )
    if not examples:
        raise ClientError(f"{path} has no examples")
    return examples


def batch_submit(client: httpx.Client, args: argparse.Namespace, out: TextIO) -> int:
    body: dict[str, Any] = {"examples": read_examples(args.file)}
    if args.max_tokens:
        body["max_tokens"] = args.max_tokens
    batch = _call(client, "POST", "/v1/ensemble/batch", json=body)
    out.write(f"batch {batch['id']}: {batch['request_counts']['total']} items accepted\n")
    if not args.wait:
        out.write(f"follow it with: ensemblehub jobs ... or GET /v1/ensemble/batch/{batch['id']}\n")
        return 0
    batch = follow_batch(client, batch["id"], out, poll_s=args.poll)
    output = args.output or Path(f"{batch['id']}.results.jsonl")
    count = write_results(client, batch["id"], output)
    out.write(f"\n{batch['status']}: {count} results written to {output}\n")
    return 0 if batch["status"] == "completed" else 1


FINAL_BATCH_STATES = ("completed", "failed", "cancelled", "expired")


def follow_batch(client: httpx.Client, batch_id: str, out: TextIO, *, poll_s: float = 1.0) -> dict[str, Any]:
    started = time.monotonic()
    live = out.isatty()
    while True:
        batch = _call(client, "GET", f"/v1/ensemble/batch/{batch_id}")
        line = progress_line(batch["request_counts"], time.monotonic() - started, batch["status"])
        out.write(("\r" + line) if live else (line + "\n"))
        out.flush()
        if batch["status"] in FINAL_BATCH_STATES:
            return batch
        time.sleep(poll_s)


def progress_line(counts: dict[str, int], elapsed_s: float, status: str, width: int = 30) -> str:
    total = max(1, int(counts.get("total", 0)))
    done = int(counts.get("completed", 0)) + int(counts.get("failed", 0))
    filled = int(width * done / total)
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    eta = f"{(total - done) / rate:.0f}s" if rate > 0 and done < total else ("0s" if done >= total else "?")
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
        f"completed={counts.get('completed', 0)} failed={counts.get('failed', 0)} "
        f"{rate:.2f} items/s ETA {eta} ({status})"
    )


def write_results(client: httpx.Client, batch_id: str, path: Path) -> int:
    try:
        resp = client.get(
            f"/v1/ensemble/batch/{batch_id}/results", headers={"Accept": "application/x-ndjson"}
        )
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot fetch results: {exc}") from exc
    if resp.status_code >= 400:
        raise ClientError(f"{resp.status_code}: {resp.text[:300]}")
    lines = [line for line in resp.text.splitlines() if line.strip()]
    path.write_text("\n".join(lines) + ("\n" if lines else ""))
    return len(lines)


def config_history(client: httpx.Client, out: TextIO) -> int:
    versions = _call(client, "GET", "/v1/ensemble/config/versions")["data"]
    for v in versions:
        config = v.get("default_ensemble_config", {})
        models = ", ".join(m.get("name") or m["path"] for m in v.get("model_specs", []))
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v["created_at"]))
        method = config.get("aggregation_method") or config.get("ensemble_method")
        out.write(
            f"v{v['version']:<4} {created}  {config.get('model_selection_method')}+{method}  "
            f"models: {models}  {v.get('note') or ''}\n"
        )
    return 0


def config_set(client: httpx.Client, args: argparse.Namespace, out: TextIO) -> int:
    body: dict[str, Any] = json.loads(args.file.read_text()) if args.file else {}
    if args.assignments:
        changes = body.setdefault("default_ensemble_config", {})
        for assignment in args.assignments:
            key, sep, raw = assignment.partition("=")
            if not sep:
                raise ClientError(f"--set expects KEY=VALUE, got {assignment!r}")
            try:
                changes[key.strip()] = json.loads(raw)
            except json.JSONDecodeError:
                changes[key.strip()] = raw
    if args.note:
        body["note"] = args.note
    if not body:
        raise ClientError("nothing to set: give --file or --set KEY=VALUE")
    version = _call(client, "POST", "/v1/ensemble/config", json=body)
    out.write(f"stored config version {version['version']}\n")
    return 0
