"""The ``ensemblehub`` console script: api, worker, flower, migrate, up."""

from __future__ import annotations

import argparse
import os
import secrets
import sys

from ensemblehub import services


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ensemblehub", description="Ensemble-Hub: several LLMs answer together."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    from api.server_flags import add_server_flags

    add_server_flags(sub.add_parser("api", help="run the HTTP API (same flags as python -m ensemblehub.api)"))

    w = sub.add_parser("worker", help="run a Celery worker that holds the models")
    w.add_argument("--queues", default="models,webhooks,maintenance")
    w.add_argument("--name", default=None, help="worker node name (default: ensemblehub@<host>.<pid>)")
    w.add_argument("--loglevel", default="INFO")
    w.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="jobs run at once, batched on shared models (default: ENSEMBLEHUB_CONCURRENCY or 8)",
    )
    w.add_argument(
        "--nice",
        type=int,
        default=None,
        help="run below the API's CPU priority (0-19, as nice(1)) on a machine shared with the API "
        "(default: ENSEMBLEHUB_WORKER_NICE or 0; `ensemblehub up` uses 10)",
    )
    held = w.add_mutually_exclusive_group()
    held.add_argument(
        "--members",
        default=None,
        help="the member models this worker holds (names, comma-separated): it reads the queues "
        "of their member sets instead of `models` and refuses jobs naming other members "
        "(routing: ENSEMBLEHUB_ROUTE_BY_MEMBERS=true on the API)",
    )
    held.add_argument(
        "--config-version",
        type=int,
        default=None,
        help="hold the members of this stored config version (as --members with their names)",
    )

    f = sub.add_parser(
        "flower", help="run the Flower dashboard (basic auth from ENSEMBLEHUB_FLOWER_BASIC_AUTH)"
    )
    f.add_argument("--port", type=int, default=None)
    f.add_argument("--address", default="127.0.0.1")

    sub.add_parser("migrate", help="create the database if needed and apply the migrations")

    up = sub.add_parser(
        "up", help="migrate, then run a worker, Flower and the API together (Ctrl-C stops all)"
    )
    up.add_argument(
        "--embedded", action="store_true", help="SQLite + in-process worker, no Postgres/Redis needed"
    )
    up.add_argument("--data-dir", default=None, help="embedded mode: where the SQLite file lives")
    add_server_flags(up)

    from ensemblehub.client_commands import add_client_commands

    add_client_commands(sub)
    from ensemblehub.calibrate_command import add_calibrate_command

    add_calibrate_command(sub)
    from ensemblehub.eval_command import add_eval_command

    add_eval_command(sub)
    from ensemblehub.keys_command import add_keys_command

    add_keys_command(sub)

    args = parser.parse_args(argv)
    if args.command in ("batch", "jobs", "config"):
        from ensemblehub.client_commands import run_client_command

        return run_client_command(args)
    if args.command == "calibrate":
        from ensemblehub.calibrate_command import run_calibrate

        return run_calibrate(args)
    if args.command == "keys":
        from ensemblehub.keys_command import run_keys_command

        return run_keys_command(args)
    if args.command == "eval":
        from ensemblehub.eval_command import run_eval

        return run_eval(args)
    if args.command == "api":
        from ensemblehub.api import main as api_main

        return api_main([a for a in (argv if argv is not None else sys.argv[1:]) if a != "api"])
    if args.command == "worker":
        return services.run_worker(
            queues=args.queues,
            name=args.name,
            loglevel=args.loglevel,
            concurrency=args.concurrency,
            members=args.members,
            config_version=args.config_version,
            nice=worker_nice(args.nice),
        )
    if args.command == "flower":
        return services.run_flower(port=args.port, address=args.address, basic_auth=flower_basic_auth())
    if args.command == "migrate":
        return services.migrate_command()
    if args.command == "up":
        from ensemblehub.up import run_up

        return run_up(args)
    parser.error(f"unknown command {args.command}")
    return 2


def worker_nice(flag: int | None, default: int = 0) -> int:
    """The worker's nice value: the flag, else ENSEMBLEHUB_WORKER_NICE, else ``default``."""
    value = flag if flag is not None else int(os.environ.get("ENSEMBLEHUB_WORKER_NICE", default))
    if not 0 <= value <= 19:
        raise SystemExit(f"the worker's nice value must be 0..19, got {value}")
    return value


def flower_basic_auth() -> str:
    """Flower is never open: without ENSEMBLEHUB_FLOWER_BASIC_AUTH a random password is made."""
    configured = os.environ.get("ENSEMBLEHUB_FLOWER_BASIC_AUTH")
    if configured:
        user, _, password = configured.partition(":")
        if not user or not password:
            raise SystemExit("ENSEMBLEHUB_FLOWER_BASIC_AUTH must be user:password (both non-empty)")
        return configured
    auth = f"admin:{secrets.token_urlsafe(12)}"
    print(f"Flower basic auth (generated; set ENSEMBLEHUB_FLOWER_BASIC_AUTH to choose): {auth}", flush=True)
    return auth


if __name__ == "__main__":
    sys.exit(main())
