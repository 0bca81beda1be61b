"""API keys: made once, stored as their SHA-256, looked up by that hash on every request."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from persistence.models import ApiKey, utcnow

KEY_PREFIX = "ehk_"


def new_api_key_token() -> str:
    """A new key: ``ehk_`` and 256 random bits (URL-safe base64)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_api_key(
    session: Session, *, tenant: str, admin: bool = False, note: str | None = None
) -> tuple[ApiKey, str]:
    """Store a new key of ``tenant``; returns the row and the key itself (never stored)."""
    token = new_api_key_token()
    row = ApiKey(
        tenant=tenant,
        key_hash=hash_api_key(token),
        prefix=token[: len(KEY_PREFIX) + 6],
        admin=admin,
        note=note,
    )
    session.add(row)
    session.flush()
    return row, token


def find_active_key(session: Session, token: str) -> ApiKey | None:
    return session.scalars(
        select(ApiKey).where(ApiKey.key_hash == hash_api_key(token), ApiKey.revoked_at.is_(None))
    ).first()


def active_keys_exist(session: Session) -> bool:
    return bool(session.scalar(select(exists().where(ApiKey.revoked_at.is_(None)))))


def list_api_keys(session: Session, *, include_revoked: bool = False) -> Sequence[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.tenant, ApiKey.created_at)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return session.scalars(query).all()


def revoke_api_key(session: Session, key_id: str) -> bool:
    """Revoke a key by its id (``key-...``) or its listed prefix; True if one was revoked."""
    done = session.execute(
        update(ApiKey)
        .where((ApiKey.id == key_id) | (ApiKey.prefix == key_id), ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .returning(ApiKey.id)
    ).all()
    return bool(done)
