"""`vitdex worker` against a Redis of its own that dies: the worker waits and reconnects,
and nothing it started outlives it.

Each test starts a private ``redis-server`` on a free port (never the shared one) and a
real worker process, and kills one or the other with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import OwnRedis
from tests.photos import make_photo
from vitdex.config import load_settings
from vitdex.db import JobState
from vitdex.db import jobs as job_sql
from vitdex.jobs.queue import RqQueue, make_queue, rq_queue_name


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def private_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vitdex_env: dict[str, str]
) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    monkeypatch.setenv("VITDEX_REDIS_URL", server.url)
    monkeypatch.setenv("VITDEX_QUEUE_NAME", f"vitdex-test-{uuid.uuid4().hex[:10]}")
    try:
        yield server
    finally:
        server.kill()


def _start_worker(tmp_path: Path) -> subprocess.Popen[str]:
    log = (tmp_path / "worker.log").open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "vitdex", "worker"],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid``, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 is the parent pid; the command name (field 2) may hold spaces.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too; only its parent (init, here) has not reaped it yet.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _index_job(folder: Path) -> int:
    sessions = job_sql.catalog_sessions(load_settings().storage.resolved_database_url)
    with sessions() as session:
        job, _ = job_sql.enqueue_job_row(session, "index", {"paths": [str(folder)]})
        session.commit()
        return job.id


def _job(job_id: int) -> dict[str, Any]:
    sessions = job_sql.catalog_sessions(load_settings().storage.resolved_database_url)
    with sessions() as session:
        return job_sql.job_to_dict(job_sql.get_job(session, job_id))


def test_worker_outlives_redis_and_runs_jobs_after_it_returns(
    private_redis: OwnRedis, tmp_path: Path
) -> None:
    big = tmp_path / "big"
    for i in range(60):
        make_photo(big / f"b{i:03d}.jpg", size=(320, 240), seed=i)
    small = tmp_path / "small"
    for i in range(4):
        make_photo(small / f"s{i}.jpg", seed=100 + i)
    first = _index_job(big)
    queue = make_queue(load_settings())
    assert isinstance(queue, RqQueue)
    queue.submit(first, kind="index")
    queue.close()
    worker = _start_worker(tmp_path)
    try:
        # Redis dies while the worker is busy with a job (or right after it).
        _wait(lambda: _job(first)["state"] != JobState.QUEUED, 120, "the job to start")
        private_redis.kill()
        # The job's state lives in SQL: it finishes without Redis.
        _wait(lambda: _job(first)["state"] == JobState.SUCCEEDED, 120, "the job to end")
        time.sleep(3)
        log = (tmp_path / "worker.log").read_text()
        assert worker.poll() is None, f"the worker exited while Redis was away:\n{log[-3000:]}"
        assert "does not answer" in log

        # Redis comes back empty; the same worker takes the next job.
        private_redis.start()
        second = _index_job(small)
        queue = make_queue(load_settings())
        assert isinstance(queue, RqQueue)
        queue.submit(second, kind="index")
        queue.close()
        _wait(lambda: _job(second)["state"] == JobState.SUCCEEDED, 120, "the second job")
        assert worker.poll() is None
        assert _job(second)["counts"]["embedded"] == 4

        # A stop request still ends it, cleanly.
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        _stop(worker)


def test_a_killed_worker_leaves_no_scheduler_behind(
    private_redis: OwnRedis, tmp_path: Path
) -> None:
    from redis import Redis
    from rq import Queue

    conn = Redis.from_url(private_redis.url)
    name = rq_queue_name(load_settings())
    worker = _start_worker(tmp_path)
    try:
        # The worker schedules for its queue: it holds the queue's scheduler lock...
        lock = f"rq:scheduler-lock:{name}"
        _wait(lambda: bool(conn.exists(lock)), 60, "the worker's scheduler to take its lock")
        # ...and moves a job whose time has come onto the queue, where the worker runs it.
        later = Queue(name, connection=conn).enqueue_in(timedelta(seconds=1), "os.getpid")
        _wait(lambda: later.get_status(refresh=True) == "finished", 30, "the scheduled job")

        children = _children(worker.pid)
        worker.kill()
        worker.wait(10)
        time.sleep(1)
        survivors = [pid for pid in children if _alive(pid)]
        for pid in survivors:  # do not leave them running past the test
            os.kill(pid, signal.SIGKILL)
        assert not survivors, f"processes of the killed worker still run: {survivors}"
    finally:
        _stop(worker)
        conn.close()
