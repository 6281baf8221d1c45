"""The SQL catalog on SQLite and PostgreSQL: migrations, libraries, spaces, jobs."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import inspect, text

from vitdex.db import JobState, ensure_schema, make_engine, repo, session_factory
from vitdex.db import jobs as job_sql
from vitdex.db.engine import current_revision, head_revision
from vitdex.errors import NotFoundError, SpaceMismatchError

SPEC: dict[str, Any] = {
    "name": "cls",
    "model_id": "/models/a",
    "model_revision": "abc",
    "layer": "cls",
    "preprocessing": {"size": [224, 224], "mean": [0.5, 0.5, 0.5]},
    "dim": 32,
    "metric": "ip",
}


def test_migrations_create_every_table(database_url: str) -> None:
    engine = make_engine(database_url)
    assert current_revision(engine) is None
    ensure_schema(engine)
    assert current_revision(engine) == head_revision() == "0009"
    tables = set(inspect(engine).get_table_names())
    assert {
        "libraries",
        "images",
        "spaces",
        "image_vectors",
        "image_labels",
        "jobs",
        "cluster_runs",
        "clusters",
        "cluster_members",
        "datasets",
        "dataset_items",
        "training_runs",
        "checkpoints",
        "tags",
        "image_tags",
        "saved_searches",
        "duplicate_groups",
        "duplicate_members",
        "catalog",
        "alembic_version",
    } <= tables
    ensure_schema(engine)  # idempotent
    # The migrations build exactly what the models describe (nothing left to autogenerate).
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from vitdex.db.models import Base

    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        # One identity row, written once (the second ensure_schema added none).
        (identity,) = conn.execute(text("SELECT id FROM catalog")).scalars().all()
    assert len(identity) == 32 and int(identity, 16) >= 0
    from vitdex.db.jobs import catalog_identity

    assert catalog_identity(database_url) == identity
    engine.dispose()


def test_libraries_nest_and_merge(database_url: str) -> None:
    engine = make_engine(database_url)
    ensure_schema(engine)
    sessions = session_factory(engine)
    with sessions() as s:
        inner = repo.library_for(s, "/photos/2024")
        ids = repo.insert_pending(s, inner.id, [("/photos/2024/a.jpg", 10, 1)])
        s.commit()
        assert repo.library_for(s, "/photos/2024/summer").id == inner.id
        assert repo.library_for(s, "/photos/2024x").id != inner.id  # a sibling, not a child
        outer = repo.library_for(s, "/photos")
        s.commit()
        roots = [lib.root for lib in repo.list_libraries(s)]
        assert "/photos/2024" not in roots and "/photos" in roots
        img = repo.get_image(s, ids["/photos/2024/a.jpg"])
        assert img.library_id == outer.id
    engine.dispose()


def test_space_mismatch_is_refused(database_url: str) -> None:
    engine = make_engine(database_url)
    ensure_schema(engine)
    with session_factory(engine)() as s:
        space = repo.ensure_space(s, SPEC)
        s.commit()
        assert repo.ensure_space(s, SPEC).id == space.id
        for field, value in [
            ("model_id", "/models/b"),
            ("model_revision", "def"),
            ("dim", 64),
            ("preprocessing", {"size": [384, 384]}),
        ]:
            with pytest.raises(SpaceMismatchError, match="vitdex index --reembed"):
                repo.ensure_space(s, {**SPEC, field: value})
        with pytest.raises(NotFoundError, match="known spaces: cls"):
            repo.get_space(s, "cls@8")
    engine.dispose()


def test_jobs_and_counts(database_url: str) -> None:
    engine = make_engine(database_url)
    ensure_schema(engine)
    with session_factory(engine)() as s:
        job = job_sql.create_foreground_job(s, "index", {"paths": ["/x"]})
        job_sql.update_job(s, job.id, done=3, total=10, counts={"embedded": 3})
        job_sql.finish_job(s, job.id, JobState.SUCCEEDED)
        s.commit()
        s.refresh(job)
        assert (job.state, job.done, job.total, job.counts) == ("succeeded", 3, 10, {"embedded": 3})
        assert job.finished_at is not None
        lib = repo.library_for(s, "/p")
        ids = repo.insert_pending(s, lib.id, [(f"/p/{i}.jpg", i, i) for i in range(5)])
        repo.record_failed(s, ids["/p/0.jpg"], "empty file", sha256=None, size=0, mtime_ns=0)
        repo.mark_missing(s, [ids["/p/1.jpg"]])
        s.commit()
        assert repo.status_counts(s) == {"pending": 3, "indexed": 0, "failed": 1, "missing": 1}
        assert [(r[1], r[2]) for r in repo.failed_images(s)] == [("/p/0.jpg", "empty file")]
    engine.dispose()
