"""Keyset pagination shared by every list: newest first, then ``after`` an anchor row's id."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select
from sqlalchemy.orm import Session


def after_anchor(session: Session, query: Select[Any], model: Any, after: str | None) -> Select[Any]:
    """Restrict ``query`` (ordered by ``created_at desc, id desc`` of ``model``) to the rows that
    come after the row whose id is ``after``; an unknown id restricts nothing."""
    if not after:
        return query
    anchor = session.get(model, after)
    if anchor is None:
        return query
    return query.where(
        (model.created_at < anchor.created_at)
        | ((model.created_at == anchor.created_at) & (model.id < anchor.id))
    )
