"""Jobs that must not get stuck or vanish: SQL is the record of truth for jobs.

Real processes and a real Redis of the test's own (``redis-server`` on a free port, never
the shared one): workers are SIGKILLed at seeded random points, Redis is killed and
restarted empty or is down when a library is posted. Each test runs on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from tests.helpers import OwnRedis, wait_for_job
from tests.photos import make_photo
from vitdex.api import create_app
from vitdex.config import load_settings
from vitdex.db import Image, ImageStatus, JobState, repo
from vitdex.db import jobs as job_sql
from vitdex.db.models import Job
from vitdex.errors import QueueUnavailableError
from vitdex.jobs import RqQueue, recover_jobs, recover_orphans
from vitdex.vectors.factory import open_store

Client = TestClient[Litestar]
#: Short on purpose: a dead job must be told from a live one within a few seconds here.
HEARTBEAT_S = 0.3
STALE_AFTER_S = 2.0
PHOTOS = 40


@pytest.fixture
def own_redis(
    vitdex_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[OwnRedis]:
    """The test's own Redis, with VITDEX_* set for it and for short job heartbeats."""
    redis = OwnRedis(tmp_path)
    redis.start()
    monkeypatch.setenv("VITDEX_REDIS_URL", redis.url)
    monkeypatch.setenv("VITDEX_JOB_HEARTBEAT_S", str(HEARTBEAT_S))
    monkeypatch.setenv("VITDEX_JOB_STALE_AFTER_S", str(STALE_AFTER_S))
    monkeypatch.setenv("VITDEX_BATCH_SIZE", "1")  # slow enough to be killed mid-job
    try:
        yield redis
    finally:
        redis.kill()


@pytest.fixture
def library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "allowed"
    for i in range(PHOTOS):
        # Large PNGs (no reduced decode): a job long enough to beat and to be killed in,
        # however fast the machine.
        make_photo(root / "lib" / f"p{i:02d}.png", size=(1600, 1200), seed=i)
    monkeypatch.setenv("VITDEX_ALLOWED_ROOTS", str(root))
    return root / "lib"


def _sessions() -> sessionmaker[Session]:
    return job_sql.catalog_sessions(load_settings().storage.resolved_database_url)


def _row(job_id: int) -> Job:
    with _sessions()() as session:
        job = job_sql.get_job(session, job_id)
        session.expunge(job)
        return job


def _indexed() -> int:
    with _sessions()() as session:
        query = select(func.count()).select_from(Image).where(Image.status == ImageStatus.INDEXED)
        return int(session.scalar(query) or 0)


def _start_worker(*, burst: bool = True) -> subprocess.Popen[bytes]:
    # Its own process group: SIGKILL reaches the worker and its scheduler child alike.
    return subprocess.Popen(
        [sys.executable, "-m", "vitdex", "worker", *(["--burst"] if burst else [])],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _until(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def _kill_mid_job(job_id: int, after: int) -> bool:
    """Run a worker and SIGKILL it once ``after`` photos are indexed; False if the job
    finished first."""
    worker = _start_worker()
    try:
        _until(
            lambda: _indexed() >= after or worker.poll() is not None,
            f"{after} photos are indexed",
        )
        if worker.poll() is not None:
            return False
        _kill(worker)
        return True
    finally:
        if worker.poll() is None:
            _kill(worker)


def _run_worker_to_empty() -> None:
    worker = _start_worker()
    _, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, err.decode()[-3000:]


def _every_photo_found(library: Path) -> None:
    """Every photo is indexed once, has a vector in every space, and a search by its
    stored vector finds it first."""
    settings = load_settings()
    with _sessions()() as session:
        images = {
            img.id: img.path
            for img in session.scalars(select(Image).where(Image.status == ImageStatus.INDEXED))
        }
        assert sorted(Path(p).name for p in images.values()) == sorted(
            p.name for p in library.iterdir()
        )
        for space in repo.list_spaces(session):
            store = open_store(settings, space.name, space.dim)
            try:
                ids = np.asarray(sorted(images), dtype=np.int64)
                assert store.ids().tolist() == ids.tolist(), space.name
                hits = store.search(store.get(ids), 1)
                assert [h[0].id for h in hits] == ids.tolist(), space.name
            finally:
                store.close()


def test_killed_worker_job_is_recovered_and_finishes(own_redis: OwnRedis, library: Path) -> None:
    """SIGKILLed at seeded random points: the job is recovered (by a read of the job, by
    a rescan, by the sweep), resumes with the work committed, and every photo is found."""
    rng = random.Random(10)
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        posted = client.post("/api/v1/libraries", json={"path": str(library)})
        assert posted.status_code == 202, posted.text
        job_id, lib_id = posted.json()["job"]["id"], posted.json()["library"]["id"]
        kills = 0
        for trial in range(3):
            after = min(PHOTOS - 1, _indexed() + rng.randint(1, 4))
            if not _kill_mid_job(job_id, after):
                break
            kills += 1
            dead = _row(job_id)
            assert dead.state == JobState.RUNNING and dead.heartbeat_at is not None
            # Each way of finding the orphan recovers it at once (its pid is gone here).
            if trial == 0:
                job = client.get(f"/api/v1/jobs/{job_id}").json()
            elif trial == 1:
                job = client.post(f"/api/v1/libraries/{lib_id}/scan").json()["job"]
            else:
                report = recover_jobs(_sessions(), RqQueue(load_settings()))
                assert report.requeued == [job_id] and job_id in report.submitted
                job = client.get(f"/api/v1/jobs/{job_id}").json()
            assert job["id"] == job_id and job["state"] == "queued", job
            assert job["error"].startswith("recovered at") and f"(#{trial + 1})" in job["error"]
        assert kills >= 2, "the job finished before it could be killed; make it slower"
        assert _indexed() < PHOTOS
        _run_worker_to_empty()
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        assert job["state"] == "succeeded", job
        assert job["counts"]["embedded"] + job["counts"].get("unchanged", 0) >= 1
    _every_photo_found(library)


def test_a_job_on_another_host_is_an_orphan_once_its_heartbeat_stops(
    own_redis: OwnRedis, library: Path
) -> None:
    """A live job beats; killed, and owned by a host this one cannot check, it is an
    orphan only once its heartbeat is older than the threshold."""
    with _sessions()() as session:
        job, _ = job_sql.enqueue_job_row(session, "index", {"paths": [str(library)]})
        session.commit()
        job_id = job.id
    queue = RqQueue(load_settings())
    queue.submit(job_id, kind="index")
    worker = _start_worker()
    try:
        _until(lambda: _indexed() >= 1, "the job runs")
        first = _row(job_id).heartbeat_at
        _until(lambda: _row(job_id).heartbeat_at != first, "the heartbeat moves")
        assert not recover_orphans(_sessions(), queue, stale_after_s=STALE_AFTER_S).requeued
        _kill(worker)
    finally:
        if worker.poll() is None:
            _kill(worker)
    with _sessions()() as session:
        row = session.get_one(Job, job_id)
        row.params = {**row.params, "owner": {"host": "another-host", "pid": 1}}
        session.commit()
        beat = row.heartbeat_at
    assert beat is not None
    # Fresh heartbeat: nothing here can tell it is dead yet.
    assert not recover_orphans(_sessions(), queue, stale_after_s=60).requeued
    time.sleep(STALE_AFTER_S + 0.5)
    report = recover_orphans(_sessions(), queue, stale_after_s=STALE_AFTER_S)
    assert report.requeued == [job_id] and report.submitted == [job_id]
    assert "no heartbeat for" in (_row(job_id).error or "")
    _run_worker_to_empty()
    assert _row(job_id).state == JobState.SUCCEEDED
    _every_photo_found(library)
    queue.close()


def test_cancel_on_an_orphan_cancels_it_and_the_library_can_go(
    own_redis: OwnRedis, library: Path
) -> None:
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        posted = client.post("/api/v1/libraries", json={"path": str(library)}).json()
        job_id, lib_id = posted["job"]["id"], posted["library"]["id"]
        assert _kill_mid_job(job_id, 2), "the job finished before it could be killed"
        assert _row(job_id).state == JobState.RUNNING
        cancelled = client.delete(f"/api/v1/jobs/{job_id}")
        assert cancelled.status_code == 202
        assert cancelled.json()["state"] == "cancelled", cancelled.json()
        removed = client.delete(f"/api/v1/libraries/{lib_id}")
        assert removed.status_code == 200, removed.text
        assert removed.json()["images_removed"] >= 2
        assert client.get("/api/v1/libraries").json()["libraries"] == []


def test_queued_rows_are_resubmitted_after_redis_restarts_empty(
    own_redis: OwnRedis, library: Path
) -> None:
    with _sessions()() as session:
        ids: list[int] = []
        for folder in ("a", "b"):
            sub = library.parent / folder
            make_photo(sub / "x.jpg", seed=len(ids) + 100)
            job, _ = job_sql.enqueue_job_row(session, "index", {"paths": [str(sub)]})
            ids.append(job.id)
        session.commit()
    queue = RqQueue(load_settings())
    for job_id in ids:
        queue.submit(job_id, kind="index")
    assert queue.depth() == 2
    own_redis.kill()
    own_redis.start()  # empty: the queue is lost, the rows still read queued
    assert queue.depth() == 0
    report = recover_jobs(_sessions(), queue)
    assert report.submitted == ids and report.unavailable is None
    assert queue.depth() == 2
    again = recover_jobs(_sessions(), queue)  # rq holds them now: nothing enqueued twice
    assert again.submitted == ids and queue.depth() == 2
    _run_worker_to_empty()
    assert [_row(job_id).state for job_id in ids] == [JobState.SUCCEEDED] * 2
    queue.close()


def test_post_while_redis_is_down_answers_503_and_the_job_runs_later(
    own_redis: OwnRedis, library: Path
) -> None:
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        own_redis.kill()
        down = client.post("/api/v1/libraries", json={"path": str(library)})
        assert down.status_code == 503, down.text
        assert down.headers["content-type"].startswith("application/json")
        assert "stays queued" in down.json()["detail"]
        queued = client.get("/api/v1/jobs").json()["jobs"]
        assert [job["state"] for job in queued] == ["queued"]
        job_id = queued[0]["id"]
        assert recover_jobs(_sessions(), RqQueue(load_settings())).unavailable is not None

        own_redis.start()
        # The same POST again finds the queued row and submits it (the sweep would too).
        again = client.post("/api/v1/libraries", json={"path": str(library)})
        assert again.status_code == 202, again.text
        assert again.json()["job"]["id"] == job_id
        assert RqQueue(load_settings()).depth() == 1
        _run_worker_to_empty()
        assert wait_for_job(client, job_id)["state"] == "succeeded"
    _every_photo_found(library)


def test_cli_submit_while_redis_is_down_is_one_line(own_redis: OwnRedis, library: Path) -> None:
    with _sessions()() as session:
        job, _ = job_sql.enqueue_job_row(session, "index", {"paths": [str(library)]})
        session.commit()
    own_redis.kill()
    with pytest.raises(QueueUnavailableError) as caught:
        RqQueue(load_settings()).submit(job.id, kind="index")
    assert caught.value.http_status == 503 and "\n" not in caught.value.message
    assert _row(job.id).state == JobState.QUEUED


def test_a_killed_foreground_train_is_not_shown_running_and_cancels_at_once(
    vitdex_env: dict[str, str],
) -> None:
    """``vitdex train list`` recovers a run whose process died (queued again, to resume
    from its checkpoint); ``vitdex train cancel`` then cancels it at once."""
    from tests.helpers import as_json, run_vitdex
    from vitdex.db import training as run_sql

    with _sessions()() as session:
        run = run_sql.create_run(
            session,
            dataset_id=None,
            base_model="tiny",
            version="sd15",
            config={},
            total_steps=30,
            output_dir="",
        )
        job, _ = job_sql.enqueue_job_row(session, "train", {"run_id": run.id})
        run.job_id, run.state = job.id, JobState.RUNNING
        session.commit()
        run_id, job_id = run.id, job.id
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with _sessions()() as session:
        claimed = job_sql.start_job(session, job_id)
        assert claimed is not None
        claimed.params = {**claimed.params, "owner": {**claimed.params["owner"], "pid": dead.pid}}
        session.commit()
    listed = as_json(run_vitdex("train", "list", "--json"))
    assert [(r["id"], r["state"], r["job_state"]) for r in listed] == [(run_id, "queued", "queued")]
    assert "recovered at" in (_row(job_id).error or "")
    # Queued again and dead again (its next process killed too): cancel ends it at once.
    with _sessions()() as session:
        again = job_sql.start_job(session, job_id)
        assert again is not None
        again.params = {**again.params, "owner": {**again.params["owner"], "pid": dead.pid}}
        session.commit()
    cancelled = as_json(run_vitdex("train", "cancel", str(run_id), "--json"))
    assert cancelled["state"] == "cancelled" and cancelled["job_state"] == "cancelled"
    assert _row(job_id).state == JobState.CANCELLED
