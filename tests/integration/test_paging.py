"""Lists page newest first with `after` (keyset pagination shared by jobs, batches and files)."""

from __future__ import annotations

from persistence import batch_repository, repository
from persistence.db import Database


def test_jobs_and_batches_page_newest_first_after_an_anchor(database_url):
    db = Database(database_url)
    try:
        with db.transaction() as session:
            ids = [
                repository.create_job(
                    session, kind="paging", request={}, config_version_id=None, tenant="pager"
                ).id
                for _ in range(5)
            ]
        with db.transaction() as session:
            first = [j.id for j in repository.list_jobs(session, tenant="pager", limit=2)]
            second = [j.id for j in repository.list_jobs(session, tenant="pager", limit=2, after=first[-1])]
            rest = [j.id for j in repository.list_jobs(session, tenant="pager", limit=10, after=second[-1])]
            unknown = [
                j.id for j in repository.list_jobs(session, tenant="pager", limit=10, after="job-nope")
            ]
            batches = batch_repository.list_batches(session, tenant="nobody", after="batch-nope")
        assert first + second + rest == unknown
        assert sorted(unknown) == sorted(ids) and len(set(first + second + rest)) == 5
        assert list(batches) == []
    finally:
        db.dispose()
