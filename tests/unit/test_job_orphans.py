"""Which running job rows count as orphans: read from the row alone, no database."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import timedelta

from vitdex.db.models import Job, JobState, utcnow
from vitdex.db.recovery import is_orphan


def _running(owner: dict[str, object] | None, beat_age_s: float | None) -> Job:
    now = utcnow()
    return Job(
        kind="index",
        state=JobState.RUNNING,
        params={"owner": owner} if owner else {},
        heartbeat_at=None if beat_age_s is None else now - timedelta(seconds=beat_age_s),
    )


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_owner_on_this_host_is_at_work_however_late_its_heartbeat() -> None:
    here = {"host": socket.gethostname(), "pid": os.getpid()}
    assert not is_orphan(_running(here, 3600), stale_after_s=60)
    assert not is_orphan(_running(here, 1), stale_after_s=60)


def test_a_gone_owner_on_this_host_is_an_orphan_however_fresh_its_heartbeat() -> None:
    gone = {"host": socket.gethostname(), "pid": _dead_pid()}
    assert is_orphan(_running(gone, 0), stale_after_s=60)


def test_another_hosts_job_is_judged_by_its_heartbeat() -> None:
    there = {"host": "another-host", "pid": os.getpid()}
    assert not is_orphan(_running(there, 10), stale_after_s=60)
    assert is_orphan(_running(there, 61), stale_after_s=60)


def test_a_row_that_says_nothing_of_its_process_is_never_taken_for_dead() -> None:
    assert not is_orphan(_running(None, None), stale_after_s=60)
    finished = _running({"host": "another-host", "pid": 1}, 3600)
    finished.state = JobState.SUCCEEDED
    assert not is_orphan(finished, stale_after_s=60)
