"""Jobs on the tiny ViT: the in-process thread queue and real rq workers on real Redis.

Job state lives in SQL; each test reads it back from there, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tests.photos import make_photo
from vitdex.config import load_settings
from vitdex.db import Image, ImageStatus, JobState, repo
from vitdex.db import jobs as job_sql
from vitdex.db.recovery import owner_gone
from vitdex.errors import ConfigError
from vitdex.jobs import runner
from vitdex.jobs.queue import (
    RqQueue,
    ThreadQueue,
    bind_worker_settings,
    make_queue,
    rq_job_id,
    run_queued_job,
)
from vitdex.search.cluster import get_cluster_run
from vitdex.vectors.factory import open_store

REDIS_URL = os.environ.get("VITDEX_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _sessions() -> sessionmaker[Session]:
    return job_sql.catalog_sessions(load_settings().storage.resolved_database_url)


def _photos(folder: Path, n: int, size: tuple[int, int] = (64, 48)) -> list[Path]:
    return [make_photo(folder / f"p{i:03d}.jpg", size=size, seed=i) for i in range(n)]


def _enqueue(kind: str, params: dict[str, Any], key: str | None = None) -> tuple[int, bool]:
    with _sessions()() as session:
        job, created = job_sql.enqueue_job_row(session, kind, params, dedupe_key=key)
        session.commit()
        return job.id, created


def _job(job_id: int) -> dict[str, Any]:
    with _sessions()() as session:
        return job_sql.job_to_dict(job_sql.get_job(session, job_id))


def _consistent() -> set[int]:
    """Every indexed image has a vector in every space and the stores hold nothing else."""
    settings = load_settings()
    with _sessions()() as session:
        indexed = set(session.scalars(select(Image.id).where(Image.status == ImageStatus.INDEXED)))
        for space in repo.list_spaces(session):
            rows = set(repo.vector_image_ids(session, space.id))
            store = open_store(settings, space.name, space.dim)
            assert set(store.ids().tolist()) == rows == indexed, space.name
            store.close()
    return indexed


@pytest.fixture
def thread_queue(vitdex_env: dict[str, str]) -> Iterator[ThreadQueue]:
    queue = make_queue(load_settings())
    assert isinstance(queue, ThreadQueue) and queue.ping()
    yield queue
    queue.close()


def test_index_job_runs_to_success(thread_queue: ThreadQueue, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    _photos(lib, 6)
    job_id, created = _enqueue("index", {"paths": [str(lib)], "reembed": False})
    assert created and _job(job_id)["state"] == JobState.QUEUED
    thread_queue.submit(job_id)
    thread_queue.submit(job_id)  # a second submit of the same row is a no-op
    assert thread_queue.join(120)
    job = _job(job_id)
    assert job["state"] == JobState.SUCCEEDED, job["error"]
    assert (job["done"], job["total"], job["progress"]) == (6, 6, 1.0)
    assert job["counts"]["embedded"] == 6 and job["counts"]["new"] == 6
    assert job["started_at"] and job["finished_at"] and job["eta_seconds"] is None
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    assert len(_consistent()) == 6
    with _sessions()() as session:
        jobs, total = job_sql.list_jobs(session, state="succeeded", kind="index")
        assert total == 1 and jobs[0].id == job_id


def test_cancel_mid_job_leaves_a_consistent_catalog(
    vitdex_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    import vitdex.jobs.index

    monkeypatch.setattr(vitdex.jobs.index, "CANCEL_POLL_S", 0.0)  # check every batch
    # The queue's jobs run with the settings it was made with: one photo per batch.
    thread_queue = ThreadQueue(load_settings(batch_size=1))
    request.addfinalizer(thread_queue.close)
    lib = tmp_path / "lib"
    n = 40
    _photos(lib, n, size=(40, 30))
    job_id, _ = _enqueue("index", {"paths": [str(lib)]})
    thread_queue.submit(job_id)
    deadline = time.monotonic() + 60
    while _job(job_id)["done"] < 2:
        assert time.monotonic() < deadline, _job(job_id)
        time.sleep(0.005)
    with _sessions()() as session:
        assert job_sql.request_cancel(session, job_id).cancel_requested
        session.commit()
    assert thread_queue.join(60)
    job = _job(job_id)
    assert job["state"] == JobState.CANCELLED, job
    assert 2 <= job["done"] < n and job["total"] == n
    first = _consistent()
    assert 2 <= len(first) < n

    again, _ = _enqueue("index", {"paths": [str(lib)]})
    thread_queue.submit(again)
    assert thread_queue.join(120)
    assert _job(again)["state"] == JobState.SUCCEEDED
    assert _job(again)["counts"]["unchanged"] == len(first)
    assert len(_consistent()) == n


def test_dedupe_and_cancel_while_queued(thread_queue: ThreadQueue, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    _photos(lib, 2)
    params = {"paths": [str(lib)]}
    first, created = _enqueue("index", params, key=f"scan:{lib}")
    second, created_again = _enqueue("index", params, key=f"scan:{lib}")
    assert created and not created_again and first == second
    assert _job(first)["params"]["dedupe_key"] == f"scan:{lib}"
    other, _ = _enqueue("index", params, key="another")
    assert other != first

    with _sessions()() as session:
        cancelled = job_sql.request_cancel(session, other)
        session.commit()
        assert cancelled.state == JobState.CANCELLED  # queued: cancelled at once
    thread_queue.submit(other)  # skipped: the row is finished
    thread_queue.submit(first)
    assert thread_queue.join(60)
    assert _job(other)["state"] == JobState.CANCELLED and _job(other)["done"] == 0
    assert _job(first)["state"] == JobState.SUCCEEDED
    with _sessions()() as session:
        # Finished jobs are returned unchanged by a cancel request.
        assert job_sql.request_cancel(session, first).state == JobState.SUCCEEDED
        session.commit()
    # A finished job no longer dedupes: the same scan can run again.
    third, created_third = _enqueue("index", params, key=f"scan:{lib}")
    assert created_third and third != first


def test_failing_job_records_its_error(thread_queue: ThreadQueue, tmp_path: Path) -> None:
    lib = tmp_path / "gone"
    _photos(lib, 1)
    job_id, _ = _enqueue("index", {"paths": [str(lib)]})
    for photo in lib.iterdir():
        photo.unlink()
    lib.rmdir()
    thread_queue.submit(job_id)
    assert thread_queue.join(60)
    job = _job(job_id)
    assert job["state"] == JobState.FAILED
    assert "not a folder" in job["error"] and job["finished_at"]


def _clean_redis(conn: Any, queue_name: str, catalog: str, job_ids: list[int]) -> None:
    keys = list(conn.scan_iter(match=f"rq:*{queue_name}*"))
    keys += [f"rq:job:{rq_job_id(catalog, i)}" for i in job_ids]
    keys += [f"rq:results:{rq_job_id(catalog, i)}" for i in job_ids]
    if keys:
        conn.delete(*keys)


def test_rq_worker_runs_index_and_cluster_jobs(
    vitdex_env: dict[str, str], tmp_path: Path, rq_redis: tuple[Any, str]
) -> None:
    conn, queue_name = rq_redis
    lib = tmp_path / "lib"
    _photos(lib, 8)
    index_id, _ = _enqueue("index", {"paths": [str(lib)]})
    cluster_id, _ = _enqueue("cluster", {"space": "cls", "k": 2, "method": "kmeans"})
    queue = make_queue(load_settings())
    try:
        assert isinstance(queue, RqQueue) and queue.ping()
        queue.submit(index_id)
        queue.submit(index_id)  # same row, same rq id: not enqueued twice
        queue.submit(cluster_id)
        assert queue.depth() == 2
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "vitdex", "worker", "--burst"],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        worker_s = time.monotonic() - started
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert queue.depth() == 0
        index_job, cluster_job = _job(index_id), _job(cluster_id)
        assert index_job["state"] == JobState.SUCCEEDED, index_job["error"]
        assert index_job["counts"]["embedded"] == 8
        assert cluster_job["state"] == JobState.SUCCEEDED, (cluster_job, proc.stderr[-3000:])
        run_id = cluster_job["counts"]["run_id"]
        assert cluster_job["counts"]["n_images"] == 8
        assert worker_s < 120
    finally:
        queue.close()
    # Redis forgets everything; the state is in SQL.
    _clean_redis(conn, queue_name, queue.catalog, [index_id, cluster_id])
    assert not list(conn.scan_iter(match=f"rq:*{queue_name}*"))
    assert _job(index_id)["state"] == JobState.SUCCEEDED
    with _sessions()() as session:
        run = get_cluster_run(session, run_id)
        assert run["job_id"] == cluster_id and run["k"] == 2
        assert sum(c["size"] for c in run["clusters"]) == 8


def test_a_claimed_job_knows_whether_its_process_is_gone(vitdex_env: dict[str, str]) -> None:
    job_id, _ = _enqueue("index", {"paths": ["/nowhere"]})
    with _sessions()() as session:
        job = job_sql.start_job(session, job_id)
        assert job is not None and job.params["owner"]["pid"] == os.getpid()
        assert not owner_gone(job)  # this very process
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        job.params = {**job.params, "owner": {**job.params["owner"], "pid": dead.pid}}
        assert owner_gone(job)
        job.params = {**job.params, "owner": {"host": "elsewhere", "pid": dead.pid}}
        assert not owner_gone(job)  # another host: nothing here can tell
        job.params = {"paths": ["/nowhere"]}
        assert not owner_gone(job)  # never claimed


def test_two_catalogs_sharing_redis_keep_their_jobs_apart(
    vitdex_env: dict[str, str],
    tmp_path: Path,
    rq_redis: tuple[Any, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rq import SimpleWorker
    from rq.job import JobStatus

    conn, queue_name = rq_redis
    lib = tmp_path / "lib"
    _photos(lib, 2)
    # Catalog A is the test's database; catalog B another one, on the same Redis.
    a_id, _ = _enqueue("index", {"paths": [str(lib)]})
    queue_a = RqQueue(load_settings())
    monkeypatch.setenv("VITDEX_DATABASE_URL", f"sqlite:///{tmp_path / 'other.db'}")
    b_id, _ = _enqueue("index", {"paths": [str(lib)]})
    queue_b = RqQueue(load_settings())
    try:
        assert a_id == b_id  # the same row id in both: once a collision in Redis
        assert queue_a.catalog != queue_b.catalog
        assert queue_a.queue.name != queue_b.queue.name
        assert queue_a.queue.name.startswith(queue_name)
        queue_a.submit(a_id)
        queue_b.submit(b_id)
        assert queue_a.depth() == 1 and queue_b.depth() == 1

        # A worker of catalog A runs A's job; B's waits on B's own queue, untouched.
        monkeypatch.setenv("VITDEX_DATABASE_URL", vitdex_env["VITDEX_DATABASE_URL"])
        bind_worker_settings(load_settings())  # what `vitdex worker` does
        SimpleWorker([queue_a.queue], connection=conn).work(burst=True)
        assert _job(a_id)["state"] == JobState.SUCCEEDED
        assert queue_b.depth() == 1

        # Should B's job reach A's worker all the same, it is refused, not run as A's row.
        stray = queue_a.queue.enqueue_call(
            "vitdex.jobs.queue.run_queued_job",
            args=(b_id, "index", queue_b.catalog),
            job_id=f"{rq_job_id(queue_b.catalog, b_id)}-stray",
        )
        SimpleWorker([queue_a.queue], connection=conn).work(burst=True)
        assert stray.get_status(refresh=True) == JobStatus.FAILED
        result = stray.latest_result()
        assert result is not None and result.exc_string is not None
        assert f"job {b_id} belongs to catalog {queue_b.catalog[:12]}" in result.exc_string
        assert "--home/--database-url" in result.exc_string
        monkeypatch.setenv("VITDEX_DATABASE_URL", f"sqlite:///{tmp_path / 'other.db'}")
        assert _job(b_id)["state"] == JobState.QUEUED
    finally:
        bind_worker_settings(None)
        queue_a.close()
        queue_b.close()
        _clean_redis(conn, queue_name, queue_a.catalog, [a_id])
        _clean_redis(conn, queue_name, queue_b.catalog, [b_id])


def test_a_bare_rq_worker_has_no_settings_to_run_a_job_with(vitdex_env: dict[str, str]) -> None:
    """rq calls a job with its arguments only: without `vitdex worker`'s settings bound,
    the job is refused, saying how to run it, and its row is left queued."""
    job_id, _ = _enqueue("index", {"paths": ["/nowhere"]})
    catalog = job_sql.catalog_identity(load_settings().storage.resolved_database_url)
    with pytest.raises(ConfigError, match="run it with `vitdex worker`"):
        run_queued_job(job_id, "index", catalog)
    assert _job(job_id)["state"] == JobState.QUEUED


@pytest.mark.parametrize("will_retry", [True, False])
def test_a_failed_attempt_is_queued_again_only_when_rq_will_retry_it(
    vitdex_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, will_retry: bool
) -> None:
    job_id, _ = _enqueue("cluster", {"space": "cls"})
    monkeypatch.setattr(runner, "_rq_will_retry", lambda: will_retry)
    followed: list[tuple[JobState, str | None]] = []

    def work(sessions: sessionmaker[Session]) -> None:
        raise RuntimeError("the database went away")

    with pytest.raises(RuntimeError):
        runner.run_job_guarded(
            load_settings(),
            job_id,
            work,
            what="test",
            on_end=lambda _s, state, error: followed.append((state, error)),
        )
    job = _job(job_id)
    if will_retry:
        # Back in the queue for rq's retry; what follows the job (a run) is queued too.
        assert job["state"] == JobState.QUEUED and job["finished_at"] is None
        assert job["error"] == "attempt failed, retrying: RuntimeError: the database went away"
        assert followed == [(JobState.QUEUED, "RuntimeError: the database went away")]
    else:
        assert job["state"] == JobState.FAILED and job["finished_at"]
        assert followed == [(JobState.FAILED, "RuntimeError: the database went away")]
