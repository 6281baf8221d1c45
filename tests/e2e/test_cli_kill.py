"""A foreground `vitdex index` killed with SIGKILL: its job row does not read running for
ever, and the next run resumes the work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from tests.helpers import as_json, run_vitdex
from tests.photos import make_photo
from vitdex.config import load_settings
from vitdex.db import Image, ImageStatus, JobState
from vitdex.db import jobs as job_sql

PHOTOS = 24


def _indexed() -> int:
    sessions = job_sql.catalog_sessions(load_settings().storage.resolved_database_url)
    with sessions() as session:
        query = select(func.count()).select_from(Image).where(Image.status == ImageStatus.INDEXED)
        return int(session.scalar(query) or 0)


def test_a_killed_index_run_is_closed_and_the_next_run_resumes(
    vitdex_env: dict[str, str], tmp_path: Path
) -> None:
    lib = tmp_path / "lib"
    for i in range(PHOTOS):
        # Large PNGs (no reduced decode): a run slow enough to be killed half-way.
        make_photo(lib / f"p{i:02d}.png", size=(1600, 1200), seed=i)
    env = {"VITDEX_BATCH_SIZE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitdex", "index", str(lib)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while _indexed() < 2:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run indexed nothing in 120 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert _indexed() < PHOTOS, "the run finished before it was killed; make it slower"

    sessions = job_sql.catalog_sessions(load_settings().storage.resolved_database_url)
    with sessions() as session:
        killed = job_sql.list_jobs(session, kind="index")[0][0]
        killed_id = killed.id
        assert killed.state == JobState.RUNNING  # nothing has looked at it yet

    summary = as_json(run_vitdex("index", str(lib), "--json", env=env))
    assert summary["embedded"] + summary["unchanged"] == PHOTOS
    assert _indexed() == PHOTOS
    with sessions() as session:
        old = job_sql.get_job(session, killed_id)
        assert old.state == JobState.FAILED
        assert old.error is not None and old.error.startswith("interrupted: its process")
        assert old.finished_at is not None
        new = job_sql.get_job(session, summary["job_id"])
        assert new.state == JobState.SUCCEEDED
