"""``python -m ensemblehub.api [flags]`` and ``uvicorn ensemblehub.api:app``.

With uvicorn the app starts with the environment's settings and keeps the latest config
version (flags are only for ``python -m``, as the guide says).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    from api.server_flags import add_server_flags

    parser = argparse.ArgumentParser(
        prog="python -m ensemblehub.api",
        description="Run the Ensemble-Hub API server (see the user's guide).",
    )
    return add_server_flags(parser)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from api.app import create_app
    from api.server_flags import FlagError, spec_from_args
    from api.settings import ApiSettings

    args = build_parser().parse_args(argv)
    try:
        spec = spec_from_args(args)
    except FlagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = ApiSettings()
    host = args.host or settings.host
    port = args.port or settings.port
    app = create_app(settings.model_copy(update={"host": host, "port": port}), startup_spec=spec)
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0


def __getattr__(name: str) -> Any:
    # `uvicorn ensemblehub.api:app` asks for `app`; build it on first access so that
    # `python -m ensemblehub.api --help` does not construct an app it never uses
    if name == "app":
        from api.app import create_app

        app = create_app()
        globals()["app"] = app
        return app
    raise AttributeError(name)


if __name__ == "__main__":
    sys.exit(main())
