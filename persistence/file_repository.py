"""Repository functions for OpenAI's Files and Batches API: stored files and the link between
an OpenAI batch and its input, output and error files. They flush but never commit."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from persistence.models import Batch, OpenAIBatch, StoredFile, new_id
from persistence.paging import after_anchor


def create_file(
    session: Session,
    *,
    filename: str,
    purpose: str,
    content: bytes,
    lines: int,
    tenant: str | None = None,
) -> StoredFile:
    row = StoredFile(
        id=new_id("file"),
        kind="upload",
        purpose=purpose,
        filename=filename,
        bytes=len(content),
        lines=lines,
        content=content,
        tenant=tenant,
    )
    session.add(row)
    session.flush()
    return row


def get_file(session: Session, file_id: str, *, tenant: str | None = None) -> StoredFile | None:
    row = session.get(StoredFile, file_id)
    if row is None or (tenant is not None and row.tenant != tenant):
        return None
    return row


def file_content(session: Session, file_id: str) -> bytes | None:
    return session.scalar(select(StoredFile.content).where(StoredFile.id == file_id))


def list_files(
    session: Session,
    *,
    purpose: str | None = None,
    limit: int = 100,
    after: str | None = None,
    tenant: str | None = None,
) -> Sequence[StoredFile]:
    query = select(StoredFile).order_by(StoredFile.created_at.desc(), StoredFile.id.desc()).limit(limit)
    if purpose:
        query = query.where(StoredFile.purpose == purpose)
    if tenant is not None:
        query = query.where(StoredFile.tenant == tenant)
    query = after_anchor(session, query, StoredFile, after)
    return session.scalars(query).all()


def store_generated_file(
    session: Session,
    *,
    file_id: str,
    kind: str,
    batch_id: str,
    filename: str,
    content: bytes,
    lines: int,
    tenant: str | None = None,
) -> StoredFile:
    """Store a batch's output or error file once. Two requests may write it at the same time
    (both from the same finished jobs, so with the same bytes): the second insert is a no-op."""
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(
        insert(StoredFile)
        .values(
            id=file_id,
            kind=kind,
            purpose="batch_output",
            filename=filename,
            bytes=len(content),
            lines=lines,
            content=content,
            tenant=tenant,
            batch_id=batch_id,
        )
        .on_conflict_do_nothing(index_elements=[StoredFile.id])
    )
    row = session.get(StoredFile, file_id)
    assert row is not None
    return row


def create_openai_batch(
    session: Session, *, batch_id: str, input_file_id: str, endpoint: str, completion_window: str
) -> OpenAIBatch:
    """Link a batch to its input file; the output and error files get their ids now and their
    contents when first asked for after the batch ended."""
    row = OpenAIBatch(
        batch_id=batch_id,
        input_file_id=input_file_id,
        endpoint=endpoint,
        completion_window=completion_window,
        output_file_id=new_id("file"),
        error_file_id=new_id("file"),
    )
    session.add(row)
    session.flush()
    return row


def get_openai_batch(
    session: Session, batch_id: str, *, tenant: str | None = None
) -> tuple[OpenAIBatch, Batch] | None:
    row = session.execute(
        select(OpenAIBatch, Batch).join(Batch, Batch.id == OpenAIBatch.batch_id).where(Batch.id == batch_id)
    ).first()
    if row is None or (tenant is not None and row[1].tenant != tenant):
        return None
    return row[0], row[1]


def batch_of_generated_file(session: Session, file_id: str) -> tuple[OpenAIBatch, Batch] | None:
    """The OpenAI batch whose output or error file has this id (the file may not exist yet)."""
    row = session.execute(
        select(OpenAIBatch, Batch)
        .join(Batch, Batch.id == OpenAIBatch.batch_id)
        .where(or_(OpenAIBatch.output_file_id == file_id, OpenAIBatch.error_file_id == file_id))
    ).first()
    return (row[0], row[1]) if row is not None else None


def list_openai_batches(
    session: Session, *, limit: int = 20, after: str | None = None, tenant: str | None = None
) -> Sequence[tuple[OpenAIBatch, Batch]]:
    query = (
        select(OpenAIBatch, Batch)
        .join(Batch, Batch.id == OpenAIBatch.batch_id)
        .order_by(Batch.created_at.desc(), Batch.id.desc())
        .limit(limit)
    )
    if tenant is not None:
        query = query.where(Batch.tenant == tenant)
    query = after_anchor(session, query, Batch, after)
    return [(link, batch) for link, batch in session.execute(query).all()]
