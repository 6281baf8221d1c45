"""Two processes writing into one home and catalog: no repair deletes the other's vectors.

A writer's batch is in the store before its SQL commit. A start-up check (of an index run,
of the search service) that ran in that window used to delete the batch as strays, and
the photos were lost to search once the writer committed. Now writers hold the writing
lease shared, repairs take it exclusively or not at all, and read paths only report.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from tests.photos import make_photo
from vitdex.cli import cli
from vitdex.config import Settings, load_settings
from vitdex.db import Image, ImageStatus, repo
from vitdex.db.jobs import catalog_sessions
from vitdex.db.models import Space
from vitdex.indexer.embedder import Embedder
from vitdex.indexer.pipeline import Indexer
from vitdex.indexer.repair import reconcile_space
from vitdex.search.service import SearchService
from vitdex.vectors.factory import open_store
from vitdex.vectors.lease import WriteLease
from vitdex.vectors.store import VectorStore

ROOT = Path(__file__).resolve().parents[2]
STRAY = 424242

# A writer that stops right after its first store write, before the SQL commit that
# records it, until the test says go: the window in which a repair used to strike.
PAUSED_WRITER = """
import sys
from tests.integration.test_two_writers import paused_index
paused_index(sys.argv[1], sys.argv[2])
"""


class _PauseAfterFirstUpsert:
    """A real store that, after the first upsert of the whole run, waits for ``go``."""

    def __init__(self, inner: VectorStore, signals: Path) -> None:
        self._inner = inner
        self._signals = signals

    def upsert(
        self,
        ids: npt.NDArray[Any],
        vectors: npt.NDArray[Any],
        payloads: Any = None,
    ) -> None:
        self._inner.upsert(ids, vectors, payloads)
        paused = self._signals / "paused"
        if paused.exists():
            return
        paused.write_text(json.dumps([int(i) for i in ids]))
        deadline = time.monotonic() + 240
        while not (self._signals / "go").exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the test never said go")
            time.sleep(0.02)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _PausingIndexer(Indexer):
    signals: Path

    def _store(self, space: Space) -> VectorStore:
        return cast(VectorStore, _PauseAfterFirstUpsert(super()._store(space), self.signals))


def paused_index(folder: str, signals: str) -> None:
    """Child process: index ``folder``, pausing before the first batch's SQL commit."""
    settings = load_settings()
    sessions = catalog_sessions(settings.storage.resolved_database_url)
    indexer = _PausingIndexer(settings, sessions, Embedder.from_settings(settings.model))
    indexer.signals = Path(signals)
    report = indexer.run([Path(folder)])
    print(json.dumps(report.to_dict()))


def _photos(folder: Path, seeds: range) -> list[Path]:
    return [make_photo(folder / f"p{s:03d}.jpg", size=(96, 72), seed=s) for s in seeds]


def _vitdex(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "vitdex", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str], what: str, timeout: float = 300) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    assert proc.returncode == 0, f"{what} exited {proc.returncode}:\n{err}"
    return out, err


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the writer ended before pausing:\n{proc.communicate()[1]}")
        assert time.monotonic() < deadline, "the writer never reached its pause"
        time.sleep(0.02)


def _index(settings: Settings, folder: Path) -> None:
    sessions = catalog_sessions(settings.storage.resolved_database_url)
    Indexer(settings, sessions, Embedder.from_settings(settings.model)).run([folder])


def assert_whole(settings: Settings, photos: int) -> None:
    """`vitdex doctor` is clean and every photo is its own nearest neighbour in every
    space (found by self-search)."""
    result = CliRunner().invoke(cli, ["doctor", "--json"])
    report = json.loads(result.output)
    assert result.exit_code == 0 and report["ok"], report
    sessions = catalog_sessions(settings.storage.resolved_database_url)
    with sessions() as session:
        statuses = session.execute(select(Image.id, Image.status)).all()
    assert len(statuses) == photos
    assert {status for _, status in statuses} == {ImageStatus.INDEXED}, statuses
    ids = sorted(image_id for image_id, _ in statuses)
    service = SearchService(settings, sessions)
    for space in settings.model.spaces:
        results = service.similar(ids=ids, k=1, include_self=True, space=space)
        assert [r.hits[0].image_id for r in results] == ids, f"not found by search in {space}"


def test_the_start_up_checks_leave_a_writers_batch_in_flight_alone(
    vitdex_env: dict[str, str], tmp_path: Path
) -> None:
    """A writer is paused between its store write and its SQL commit; meanwhile another
    process answers a search (the service's first-use check) and another indexes a
    second folder (the index run's start-up check). Nothing of the writer's is lost."""
    settings = load_settings()
    base = _photos(tmp_path / "base", range(0, 3))
    _index(settings, tmp_path / "base")
    d = _photos(tmp_path / "d", range(10, 16))
    c = _photos(tmp_path / "c", range(20, 23))
    signals = tmp_path / "signals"
    signals.mkdir()

    writer = subprocess.Popen(
        [sys.executable, "-c", PAUSED_WRITER, str(tmp_path / "d"), str(signals)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(signals / "paused", writer)
        in_flight = json.loads((signals / "paused").read_text())
        assert in_flight, "the writer paused before writing anything"

        _, err = _finish(_vitdex("similar", "--id", "1", "--json"), "vitdex similar")
        assert "a writer may be running" in err  # reported, not repaired
        indexer = _vitdex("index", str(tmp_path / "c"), "--json", "--no-progress")
        if settings.storage.resolved_database_url.startswith("postgresql"):
            # SQLite has one writer at a time: there the second run waits at its first
            # commit until the paused writer commits, so it can only finish afterwards.
            out, _ = _finish(indexer, "vitdex index C")
            assert json.loads(out)["repair_skipped"] is True
        (signals / "go").touch()
        _finish(indexer, "vitdex index C")
        _finish(writer, "the paused writer")
    finally:
        (signals / "go").touch()
        for proc in (writer,):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert_whole(settings, len(base) + len(c) + len(d))


@pytest.mark.slow
def test_two_index_runs_overlapping_at_random(vitdex_env: dict[str, str], tmp_path: Path) -> None:
    """`vitdex index D` and `vitdex index C` as two processes, the second started at a
    seeded random moment of the first, several times over one home and catalog."""
    settings = load_settings()
    trials = int(os.environ.get("VITDEX_TEST_TWO_WRITER_TRIALS", "3"))
    rng = random.Random(10)
    total = 0
    for trial in range(trials):
        d = _photos(tmp_path / f"d{trial}", range(100 * trial, 100 * trial + 12))
        c = _photos(tmp_path / f"c{trial}", range(100 * trial + 50, 100 * trial + 62))
        total += len(c) + len(d)
        first = _vitdex("index", str(d[0].parent), "--json", "--no-progress")
        time.sleep(rng.uniform(0.0, 4.0))
        second = _vitdex("index", str(c[0].parent), "--json", "--no-progress")
        _finish(first, f"trial {trial}: vitdex index D")
        _finish(second, f"trial {trial}: vitdex index C")
        assert_whole(settings, total)


def _stray_into(settings: Settings, space: str = "cls") -> None:
    """A vector the catalog does not know: what a writer's batch looks like in flight."""
    sessions = catalog_sessions(settings.storage.resolved_database_url)
    with sessions() as session:
        dim = repo.get_space(session, space).dim
    store = open_store(settings, space, dim)
    store.upsert(np.asarray([STRAY], np.int64), np.eye(1, dim, dtype=np.float32))
    store.close()


def _stored(settings: Settings, space: str = "cls") -> set[int]:
    sessions = catalog_sessions(settings.storage.resolved_database_url)
    with sessions() as session:
        dim = repo.get_space(session, space).dim
    store = open_store(settings, space, dim)
    try:
        return {int(i) for i in store.ids()}
    finally:
        store.close()


def test_repair_only_when_no_writer_holds_the_lease(
    vitdex_env: dict[str, str], tmp_path: Path
) -> None:
    settings = load_settings()
    photos = _photos(tmp_path / "lib", range(4))
    _index(settings, tmp_path / "lib")
    _stray_into(settings)
    sessions = catalog_sessions(settings.storage.resolved_database_url)
    embedder = Embedder.from_settings(settings.model)

    writer = WriteLease.of(settings)
    writer.share()  # another process's run, as far as the lease can tell
    try:
        report = Indexer(settings, sessions, embedder).run([tmp_path / "lib"])
        assert (report.repair_skipped, report.repaired) == (True, 0)
        assert STRAY in _stored(settings)

        # The search service's first-use check and a plain doctor only report.
        SearchService(settings, sessions).similar(ids=[1], k=2)
        assert STRAY in _stored(settings)
        runner = CliRunner()
        looked = runner.invoke(cli, ["doctor", "--json"])
        report_json = json.loads(looked.output)
        assert looked.exit_code == 1 and report_json["writers_active"] is True
        assert "writing" in {s["name"]: s for s in report_json["spaces"]}["cls"]["advice"]
        assert STRAY in _stored(settings)

        # doctor --repair waits briefly, then refuses with one clear line.
        refused = runner.invoke(cli, ["doctor", "--repair", "--wait", "0.2"])
        assert refused.exit_code == 2
        assert "another vitdex process is writing" in refused.output
        assert "Traceback" not in refused.output
        assert STRAY in _stored(settings)

        with sessions() as session:
            space = repo.get_space(session, "cls")
            with pytest.raises(RuntimeError, match="exclusively"):
                reconcile_space(session, space, open_store(settings, "cls", space.dim), writer)
    finally:
        writer.release()

    # No writer: the next run's start-up check repairs.
    report = Indexer(settings, sessions, embedder).run([tmp_path / "lib"])
    assert (report.repair_skipped, report.repaired) == (False, 1)
    assert STRAY not in _stored(settings)
    assert_whole(settings, len(photos))


def test_doctor_repairs_when_alone(vitdex_env: dict[str, str], tmp_path: Path) -> None:
    settings = load_settings()
    _photos(tmp_path / "lib", range(3))
    _index(settings, tmp_path / "lib")
    _stray_into(settings)
    result = CliRunner().invoke(cli, ["doctor", "--repair", "--json"])
    report = json.loads(result.output)
    assert result.exit_code == 0 and report["writers_active"] is False
    assert {s["name"]: s for s in report["spaces"]}["cls"]["repaired"] is True
    assert STRAY not in _stored(settings)
