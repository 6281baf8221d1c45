"""The writing lease: writers share it, a repair gets it only alone, a killed writer's
lease goes with its process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vitdex.errors import StoreError
from vitdex.vectors.lease import WriteLease

HOLD_SHARED = """
import sys, time
from pathlib import Path
from vitdex.errors import StoreError
from vitdex.vectors.lease import WriteLease
lease = WriteLease(Path(sys.argv[1]))
lease.share()
print("held", flush=True)
time.sleep(300)
"""


def test_writers_share_and_a_repair_needs_it_alone(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "writers.lock"
    first, second, repair = WriteLease(path), WriteLease(path), WriteLease(path)
    first.share()
    second.share()  # two writers at once: no wait
    assert (first.mode, second.mode) == ("shared", "shared")
    assert repair.try_exclusive() is False and repair.mode is None
    first.release()
    assert repair.try_exclusive() is False  # one writer left is enough to refuse
    second.release()
    assert repair.try_exclusive() is True and repair.exclusive
    repair.release()


def test_a_writer_waits_while_a_repair_runs(tmp_path: Path) -> None:
    path = tmp_path / "writers.lock"
    repair = WriteLease(path)
    assert repair.try_exclusive()
    writer = WriteLease(path)
    started = threading.Event()
    held_at: list[float] = []

    def write() -> None:
        started.set()
        writer.share()
        held_at.append(time.monotonic())

    thread = threading.Thread(target=write)
    thread.start()
    started.wait()
    time.sleep(0.3)
    assert not held_at, "a writer started while a repair held the lease"
    released_at = time.monotonic()
    repair.release()
    thread.join(timeout=10)
    assert held_at and held_at[0] >= released_at
    writer.release()


def test_a_repair_waits_a_little_for_writers_then_gives_up(tmp_path: Path) -> None:
    path = tmp_path / "writers.lock"
    writer, repair = WriteLease(path), WriteLease(path)
    writer.share()
    started = time.monotonic()
    assert repair.try_exclusive(wait=0.3) is False
    assert 0.25 <= time.monotonic() - started < 5
    threading.Timer(0.2, writer.release).start()
    assert repair.try_exclusive(wait=10) is True  # the writer finished within the wait
    repair.release()


def test_writers_active_only_reports(tmp_path: Path) -> None:
    path = tmp_path / "writers.lock"
    probe = WriteLease(path)
    assert probe.writers_active() is False
    with WriteLease(path) as writer:
        writer.share()
        assert probe.writers_active() is True
        assert writer.mode == "shared"  # the probe took nothing from the writer
    assert probe.writers_active() is False and probe.mode is None


def test_a_shared_holder_cannot_ask_for_exclusive(tmp_path: Path) -> None:
    # flock converts non-atomically: a refused upgrade would drop the shared lock too.
    lease = WriteLease(tmp_path / "writers.lock")
    lease.share()
    with pytest.raises(RuntimeError, match="release the shared lease"):
        lease.try_exclusive()
    assert lease.mode == "shared"
    lease.release()


def test_a_sigkilled_writer_releases_its_lease(tmp_path: Path) -> None:
    path = tmp_path / "writers.lock"
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_SHARED, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        repair = WriteLease(path)
        assert repair.try_exclusive() is False
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        assert repair.try_exclusive(wait=5) is True
        repair.release()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_an_unusable_home_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "locks").write_text("a file where the lock folder should be")
    with pytest.raises(StoreError, match="cannot open the writing lease"):
        WriteLease(tmp_path / "locks" / "writers.lock").share()
