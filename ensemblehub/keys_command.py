"""``ensemblehub keys create|list|revoke``: API keys of tenants, straight in the database.

The key is printed once, at creation; only its SHA-256 is stored. As soon as one key exists,
every endpoint except ``/`` and ``/status`` needs ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def add_keys_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    keys = sub.add_parser("keys", help="create, list or revoke API keys (stored hashed in Postgres)")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="make a key for a tenant and print it (shown once)")
    create.add_argument("--tenant", required=True, help="who the key belongs to; its jobs are its own")
    create.add_argument("--admin", action="store_true", help="may also change the ensemble config")
    create.add_argument("--note", default=None, help="a note to recognise the key by")
    create.add_argument("--json", action="store_true", help="print the key and its id as JSON")
    listing = actions.add_parser("list", help="list keys (id, tenant, prefix, admin; never the key)")
    listing.add_argument("--all", action="store_true", help="include revoked keys")
    revoke = actions.add_parser("revoke", help="revoke a key by its id (key-...) or its listed prefix")
    revoke.add_argument("key_id")


def run_keys_command(args: argparse.Namespace) -> int:
    from persistence import api_key_repository
    from persistence.db import Database
    from persistence.settings import DatabaseSettings

    db = Database.from_settings(DatabaseSettings())
    try:
        if args.keys_command == "create":
            if not TENANT_NAME.match(args.tenant):
                print(
                    "error: --tenant must be 1-128 letters, digits, '_', '.' or '-' (starting with a letter or digit)",
                    file=sys.stderr,
                )
                return 2
            with db.transaction() as session:
                row, token = api_key_repository.create_api_key(
                    session, tenant=args.tenant, admin=args.admin, note=args.note
                )
                key_id = row.id
            if args.json:
                print(json.dumps({"id": key_id, "tenant": args.tenant, "admin": args.admin, "key": token}))
            else:
                role = "admin key" if args.admin else "key"
                print(f"{role} {key_id} for tenant {args.tenant!r} (shown once, store it now):")
                print(token)
            return 0
        if args.keys_command == "list":
            with db.transaction() as session:
                rows = api_key_repository.list_api_keys(session, include_revoked=args.all)
                for row in rows:
                    revoked = f"  revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else ""
                    print(
                        f"{row.id}  tenant={row.tenant}  {row.prefix}...  "
                        f"{'admin' if row.admin else 'user '}  {row.note or ''}{revoked}"
                    )
            if not rows:
                print("no API keys: the API is open to requests from this machine only")
            return 0
        with db.transaction() as session:
            revoked = api_key_repository.revoke_api_key(session, args.key_id)
        if not revoked:
            print(f"error: no active key {args.key_id!r}", file=sys.stderr)
            return 1
        print(f"revoked {args.key_id}")
        return 0
    finally:
        db.dispose()
