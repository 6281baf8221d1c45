"""FaissStore: exact search, id semantics, and durability through crashes at any point."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
import pytest

from vitdex.errors import NotFoundError, SpaceMismatchError, StoreError
from vitdex.search import (
    FaissStore,
    SearchHit,
    VectorNotFoundError,
    VectorStore,
    reconcile,
    sanitize_space_name,
)
from vitdex.search.faiss_store import _HEADER

DIM = 32
BIG = 10**12  # SQL ids are arbitrary int64, nowhere near positions


def unit(n: int, dim: int = DIM, seed: int = 0) -> npt.NDArray[np.float32]:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    out: npt.NDArray[np.float32] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def brute(
    ids: npt.NDArray[np.int64], vecs: npt.NDArray[np.float32], q: npt.NDArray[np.float32], k: int
) -> list[list[int]]:
    scores = q @ vecs.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[int(ids[j]) for j in row] for row in order]


def open_store(folder: Path, **kw: Any) -> FaissStore:
    kw.setdefault("durable", False)
    return FaissStore(folder, "cls@8", DIM, **kw)


def record_size(n: int, dim: int = DIM) -> int:
    return _HEADER.size + 8 * n + 4 * n * dim


def contents(store: FaissStore) -> dict[int, bytes]:
    ids = store.ids()
    vecs = store.get(ids)
    return {int(i): v.tobytes() for i, v in zip(ids, vecs, strict=True)}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "faiss" / "cls_at_8"


# ----------------------------------------------------------------------------- search


def test_search_matches_brute_force(folder: Path) -> None:
    rng = np.random.default_rng(1)
    ids = rng.choice(BIG, size=600, replace=False).astype(np.int64) + BIG
    vecs = unit(600, seed=2)
    queries = unit(25, seed=3)
    with open_store(folder) as store:
        for lo in range(0, 600, 16):  # batches of 16, as the pipeline writes them
            store.upsert(ids[lo : lo + 16], vecs[lo : lo + 16])
        assert store.count() == 600
        hits = store.search(queries, 10)
        assert [[h.id for h in row] for row in hits] == brute(ids, vecs, queries, 10)
        expected_scores = np.sort(queries @ vecs.T, axis=1)[:, ::-1][:, :10]
        np.testing.assert_allclose([[h.score for h in r] for r in hits], expected_scores, atol=1e-5)
        single = store.search(queries[0], 5)
        assert [h.id for h in single[0]] == brute(ids, vecs, queries[:1], 5)[0]
        assert all(isinstance(h, SearchHit) for h in single[0])


def test_ids_are_sql_ids_not_positions(folder: Path) -> None:
    ids = np.array([BIG + 7, 3, BIG * 9, 42], dtype=np.int64)
    vecs = unit(4, seed=4)
    with open_store(folder) as store:
        store.upsert(ids, vecs)
        np.testing.assert_array_equal(store.ids(), np.sort(ids))
        for i, v in zip(ids, vecs, strict=True):
            top = store.search(v, 1)[0][0]
            assert top.id == int(i)
            assert top.score == pytest.approx(1.0, abs=1e-5)
        got = store.get(ids[::-1])
        assert got.tobytes() == vecs[::-1].tobytes()  # bit-identical, in the order asked
        hits = store.search(vecs[:1], 50)[0]
        assert len(hits) == 4  # fewer than k exist: no -1 padding
        assert {h.id for h in hits} == set(ids.tolist())


def test_reupsert_replaces_and_never_duplicates(folder: Path) -> None:
    ids = np.arange(BIG, BIG + 100, dtype=np.int64)
    old, new = unit(100, seed=5), unit(100, seed=6)
    with open_store(folder) as store:
        store.upsert(ids, old)
        store.upsert(ids[10:30], new[10:30])
        assert store.count() == 100
        current = old.copy()
        current[10:30] = new[10:30]
        assert store.get(ids).tobytes() == current.tobytes()
        q = unit(8, seed=7)
        assert [[h.id for h in r] for r in store.search(q, 7)] == brute(ids, current, q, 7)
        for i in range(10, 30):
            top = store.search(new[i], 1)[0][0]
            assert top.id == ids[i]
            assert top.score == pytest.approx(1.0, abs=1e-5)


def test_duplicate_ids_in_one_call_last_wins(folder: Path) -> None:
    vecs = unit(4, seed=8)
    with open_store(folder) as store:
        store.upsert(np.array([5, 6, 5, 5]), vecs)
        assert store.count() == 2
        assert store.get([5])[0].tobytes() == vecs[3].tobytes()
        assert store.get([6])[0].tobytes() == vecs[1].tobytes()
    with open_store(folder) as store:  # and the log replays the same way
        assert store.count() == 2
        assert store.get([5])[0].tobytes() == vecs[3].tobytes()


def test_delete(folder: Path) -> None:
    ids = np.arange(1, 21, dtype=np.int64)
    with open_store(folder) as store:
        store.upsert(ids, unit(20, seed=9))
        assert store.delete(np.array([3, 4, 4, 999])) == 2
        assert store.delete(np.array([3, 999])) == 0
        assert store.count() == 18
        assert 3 not in store.ids()
        with pytest.raises(KeyError, match="3"):
            store.get([1, 3])
        with pytest.raises(NotFoundError):
            store.get([4])
        assert all(h.id not in (3, 4) for h in store.search(unit(5, seed=10), 20)[0])
    with open_store(folder) as store:
        assert store.count() == 18
        with pytest.raises(VectorNotFoundError) as info:
            store.get([3])
        assert info.value.ids == [3]


def test_allowed_ids_filter_matches_brute_force_on_subset(folder: Path) -> None:
    ids = np.arange(BIG, BIG + 400, dtype=np.int64)
    vecs = unit(400, seed=11)
    q = unit(6, seed=12)
    allowed = ids[np.random.default_rng(13).choice(400, size=37, replace=False)]
    with open_store(folder) as store:
        store.upsert(ids, vecs)
        mask = np.isin(ids, allowed)
        hits = store.search(q, 10, allowed_ids=np.concatenate([allowed, [5, 6]]))
        assert [[h.id for h in r] for r in hits] == brute(ids[mask], vecs[mask], q, 10)
        # k beyond the allowed set: all allowed ids, never padding.
        few = store.search(q[0], 100, allowed_ids=allowed[:3])[0]
        assert sorted(h.id for h in few) == sorted(allowed[:3].tolist())
        assert store.search(q, 5, allowed_ids=np.array([], dtype=np.int64)) == [[]] * 6
        assert store.search(q, 5, allowed_ids=np.array([1, 2])) == [[]] * 6


def test_search_threads_gives_the_same_results(folder: Path) -> None:
    ids = np.arange(300, dtype=np.int64)
    vecs = unit(300, seed=27)
    q = unit(30, seed=28)  # above FAISS's BLAS threshold too
    threads_before = faiss.omp_get_max_threads()
    with open_store(folder, search_threads=1) as store:
        store.upsert(ids, vecs)
        assert [[h.id for h in r] for r in store.search(q, 5)] == brute(ids, vecs, q, 5)
    assert faiss.omp_get_max_threads() == threads_before


def test_l2_metric_scores_higher_is_closer(folder: Path) -> None:
    vecs = unit(50, seed=14)
    ids = np.arange(100, 150, dtype=np.int64)
    with FaissStore(folder, "cls@8", DIM, metric="l2", durable=False) as store:
        store.upsert(ids, vecs)
        hits = store.search(vecs[7], 3)[0]
        assert hits[0].id == 107
        assert hits[0].score == pytest.approx(0.0, abs=1e-5)
        assert hits[0].score > hits[1].score > hits[2].score


def test_bad_input_is_refused(folder: Path) -> None:
    with open_store(folder) as store:
        with pytest.raises(SpaceMismatchError):
            store.upsert([1], unit(1, dim=DIM + 1))
        with pytest.raises(SpaceMismatchError):
            store.search(unit(1, dim=8), 3)
        with pytest.raises(ValueError, match="-1"):
            store.upsert([-1], unit(1))
        with pytest.raises(ValueError, match="NaN"):
            store.upsert([1], np.full((1, DIM), np.nan, dtype=np.float32))
        with pytest.raises(ValueError):
            store.upsert([1, 2], unit(1))
        assert store.count() == 0
        assert store.search(unit(2), 0) == [[], []]


def test_protocol_lazy_open_describe_and_close(folder: Path) -> None:
    store = open_store(folder)
    typed: VectorStore = store  # structural match, checked by mypy
    assert isinstance(typed, VectorStore)
    assert not folder.exists()  # constructing does no I/O
    store.upsert([1, 2], unit(2))
    info = store.describe()
    assert info["backend"] == "faiss"
    assert info["space"] == "cls@8"
    assert (info["dim"], info["metric"], info["count"]) == (DIM, "ip", 2)
    assert info["index_type"] == "IDMap2,Flat"
    assert info["bytes_on_disk"] > 0
    assert info["memory_bytes_per_vector"] >= 4 * DIM
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.count()


# ----------------------------------------------------------------------------- durability


@pytest.mark.parametrize("flush", [False, True])
def test_persistence_across_reopen(folder: Path, flush: bool) -> None:
    ids = np.arange(BIG, BIG + 200, dtype=np.int64)
    vecs = unit(200, seed=15)
    with open_store(folder) as store:
        for lo in range(0, 200, 16):
            store.upsert(ids[lo : lo + 16], vecs[lo : lo + 16])
        store.delete(ids[:5])
        store.upsert(ids[5:6], vecs[100:101])
        if flush:
            store.flush()
        want = contents(store)
    wal = folder / "wal.bin"
    if flush:
        assert wal.stat().st_size == 0
        assert (folder / "index.1.faiss").exists()
    else:
        assert wal.stat().st_size > 0
        assert not list(folder.glob("index.*.faiss"))
    with open_store(folder) as again:
        assert contents(again) == want
        assert again.count() == 195


def test_second_object_replays_log_of_a_live_one(folder: Path) -> None:
    """A crash without flush or close: the log alone carries the writes."""
    first = open_store(folder)
    ids = np.arange(10, 90, dtype=np.int64)
    first.upsert(ids, unit(80, seed=16))
    second = open_store(folder)
    assert contents(second) == contents(first)
    # Each sees the other's later writes too (other processes work the same way).
    second.upsert([500], unit(1, seed=17))
    first.delete([10])
    assert first.count() == second.count() == 80
    assert contents(first) == contents(second)
    second.flush()  # a snapshot by one object is picked up by the other
    first.upsert([501], unit(1, seed=18))
    assert contents(first) == contents(second)
    assert second.count() == 81
    first.close()
    second.close()


def test_random_operations_replay_like_a_dict(folder: Path) -> None:
    """Upserts, replacements, deletes and re-inserts, checked live, after replay and after
    a snapshot against a plain dict."""
    rng = np.random.default_rng(26)
    model: dict[int, bytes] = {}
    with open_store(folder) as store:
        for step in range(120):
            ids = rng.choice(60, size=int(rng.integers(1, 9))) + BIG  # duplicates too
            if rng.random() < 0.3:
                assert store.delete(ids) == len({int(i) for i in ids} & set(model))
                for i in ids:
                    model.pop(int(i), None)
            else:
                vecs = unit(len(ids), seed=1000 + step)
                store.upsert(ids, vecs)
                for i, v in zip(ids, vecs, strict=True):
                    model[int(i)] = v.tobytes()
        assert contents(store) == model
    with open_store(folder) as store:
        assert contents(store) == model
        store.flush()
    with open_store(folder) as store:
        assert contents(store) == model


def write_batches(folder: Path, batches: int, n: int = 4) -> dict[int, bytes]:
    with open_store(folder) as store:
        for b in range(batches):
            store.upsert(np.arange(b * n, b * n + n) + BIG, unit(n, seed=100 + b))
        return contents(store)


def expected_first(batches: int, n: int = 4) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for b in range(batches):
        for i, v in enumerate(unit(n, seed=100 + b)):
            out[BIG + b * n + i] = v.tobytes()
    return out


@pytest.mark.parametrize("cut", [3, _HEADER.size + 5, record_size(4) - 1])
def test_torn_tail_is_cut_off(folder: Path, cut: int) -> None:
    write_batches(folder, 5)
    wal = folder / "wal.bin"
    good = 4 * record_size(4)
    assert wal.stat().st_size == 5 * record_size(4)
    with wal.open("r+b") as f:
        f.truncate(good + cut)
        f.seek(0, os.SEEK_END)
        f.write(os.urandom(333))
    with open_store(folder) as store:
        assert contents(store) == expected_first(4)
        assert wal.stat().st_size == good  # truncated away
        store.upsert([7], unit(1, seed=19))
    with open_store(folder) as store:
        assert store.count() == 17


def test_corrupt_record_in_the_middle_stops_replay_without_raising(folder: Path) -> None:
    write_batches(folder, 5)
    wal = folder / "wal.bin"
    data = bytearray(wal.read_bytes())
    data[2 * record_size(4) + _HEADER.size + 20] ^= 0xFF  # a payload byte of record 3
    wal.write_bytes(bytes(data))
    with open_store(folder) as store:
        assert contents(store) == expected_first(2)
        assert wal.stat().st_size == 2 * record_size(4)
        store.upsert([1], unit(1, seed=20))
    kept = list(folder.glob("wal.corrupt-*"))
    assert len(kept) == 1 and kept[0].stat().st_size == 3 * record_size(4)
    with open_store(folder) as store:
        assert store.count() == 9


class SimulatedCrashError(Exception):
    pass


def crash_after(store: FaissStore, method: str) -> None:
    original = getattr(store, method)

    def crashing(*args: Any, **kwargs: Any) -> Any:
        original(*args, **kwargs)
        raise SimulatedCrashError(method)

    setattr(store, method, crashing)


def crash_before(store: FaissStore, method: str) -> None:
    def crashing(*args: Any, **kwargs: Any) -> Any:
        raise SimulatedCrashError(method)

    setattr(store, method, crashing)


def crash_with_temp_snapshot(store: FaissStore) -> None:
    def crashing(name: str) -> int:
        faiss.write_index(store._loaded(), str(store.folder / f"{name}.tmp"))
        raise SimulatedCrashError("snapshot rename")

    store._write_snapshot_file = crashing


@pytest.mark.parametrize(
    "step",
    ["temp_snapshot", "after_snapshot", "after_meta", "after_wal_reset", "before_remove_old"],
)
@pytest.mark.parametrize("how", ["flush", "auto_compaction"])
def test_crash_during_snapshot_loses_and_duplicates_nothing(
    folder: Path, step: str, how: str
) -> None:
    store = open_store(folder, wal_limit_bytes=10**9)
    ids = np.arange(BIG, BIG + 64, dtype=np.int64)
    store.upsert(ids, unit(64, seed=21))
    store.flush()  # generation 1, so there is an old snapshot to replace
    store.upsert(ids[:16], unit(16, seed=22))  # replacements
    store.delete(ids[16:20])
    store.upsert(ids[:4] + 1000, unit(4, seed=23))
    want = contents(store)
    if step == "temp_snapshot":
        crash_with_temp_snapshot(store)
    elif step == "after_snapshot":
        crash_after(store, "_write_snapshot_file")
    elif step == "after_meta":
        crash_after(store, "_write_meta")
    elif step == "after_wal_reset":
        crash_after(store, "_reset_wal")
    else:
        crash_before(store, "_remove_snapshot")
    with pytest.raises(SimulatedCrashError):
        if how == "flush":
            store.flush()
        else:
            # Make the next write cross the threshold, so that it folds the log.
            store._wal_limit = store._snapshot_bytes = 0
            store.upsert(ids[20:21], unit(1, seed=24))
    if how == "auto_compaction":
        want[int(ids[20])] = unit(1, seed=24)[0].tobytes()  # the log had it before the crash
    store.close()  # writes nothing: the folder is as the crash left it

    with open_store(folder) as again:
        assert contents(again) == want
        assert again.count() == len(want)
        snapshots = [p.name for p in folder.glob("index.*.faiss")]
        assert len(snapshots) == 1  # leftovers of the crash are gone
        names = {p.name for p in folder.iterdir()}
        assert names == {"lock", "meta.json", "wal.bin", snapshots[0]}
        again.flush()
        again.upsert([3], unit(1, seed=25))
    with open_store(folder) as third:
        assert third.count() == len(want) + 1


def test_auto_compaction_folds_the_log(folder: Path) -> None:
    with open_store(folder, wal_limit_bytes=4 * record_size(16)) as store:
        for b in range(20):
            store.upsert(np.arange(b * 16, b * 16 + 16), unit(16, seed=200 + b))
        info = store.describe()
        assert info["generation"] >= 2
        assert info["wal_bytes"] <= max(4 * record_size(16), info["snapshot_bytes"])
        assert len(list(folder.glob("index.*.faiss"))) == 1
        want = contents(store)
    with open_store(folder) as store:
        assert contents(store) == want and store.count() == 320


def test_reopen_with_other_dim_metric_or_space_is_refused(folder: Path) -> None:
    with open_store(folder) as store:
        store.upsert([1], unit(1))
    wrong = FaissStore(folder, "cls@8", DIM * 2)
    for _ in range(2):  # a failed open is retried, never half-used
        with pytest.raises(SpaceMismatchError, match="dim"):
            wrong.count()
    with pytest.raises(SpaceMismatchError, match="metric"):
        FaissStore(folder, "cls@8", DIM, metric="l2").count()
    with pytest.raises(SpaceMismatchError, match="space"):
        FaissStore(folder, "cls", DIM).count()
    with open_store(folder) as store:  # the refused opens changed nothing
        assert store.count() == 1


def test_meta_rolled_back_is_refused_every_time(folder: Path) -> None:
    import json

    with open_store(folder) as store:
        store.upsert([1], unit(1))
        store.flush()
        store.upsert([2], unit(1, seed=1))  # a generation-1 record
    meta = json.loads((folder / "meta.json").read_text())
    meta["generation"] = 0
    (folder / "meta.json").write_text(json.dumps(meta))
    store = open_store(folder)
    for _ in range(2):  # a failed load is retried, never half-used
        with pytest.raises(StoreError, match="generation"):
            store.count()


def test_missing_meta_with_data_is_refused(folder: Path) -> None:
    write_batches(folder, 1)
    (folder / "meta.json").unlink()
    with pytest.raises(StoreError, match=r"meta\.json"):
        open_store(folder).count()


def test_reconcile_removes_strays_and_reports_missing(folder: Path) -> None:
    with open_store(folder) as store:
        store.upsert(np.arange(1, 11), unit(10))
        strays, missing = reconcile(store, np.arange(5, 16))
        np.testing.assert_array_equal(strays, [1, 2, 3, 4])
        np.testing.assert_array_equal(missing, [11, 12, 13, 14, 15])
        np.testing.assert_array_equal(store.ids(), np.arange(5, 11))
        strays, missing = reconcile(store, np.arange(5, 11))
        assert strays.size == 0 and missing.size == 0


def test_concurrent_writers_and_searchers(folder: Path) -> None:
    store = open_store(folder)
    errors: list[BaseException] = []
    done = threading.Event()

    def writer(t: int) -> None:
        try:
            for b in range(25):
                base = t * 10_000 + b * 8
                store.upsert(np.arange(base, base + 8), unit(8, seed=t * 100 + b))
        except BaseException as exc:
            errors.append(exc)

    def searcher() -> None:
        try:
            q = unit(4, seed=99)
            while not done.is_set():
                for row in store.search(q, 10):
                    assert all(h.id >= 0 for h in row)
                store.count()
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    searchers = [threading.Thread(target=searcher) for _ in range(2)]
    for th in writers + searchers:
        th.start()
    for th in writers:
        th.join()
    done.set()
    for th in searchers:
        th.join()
    assert not errors
    assert store.count() == 800
    store.close()
    with open_store(folder) as again:
        assert again.count() == 800


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from vitdex.search import FaissStore

    folder, base = sys.argv[1], int(sys.argv[2])
    store = FaissStore(folder, "cls@8", 8, durable=False)
    store.count()
    print("ready", flush=True)
    sys.stdin.readline()  # both start writing together
    for b in range(200):
        vecs = np.random.default_rng(base + b).standard_normal((4, 8)).astype(np.float32)
        store.upsert(np.arange(4) + base + 4 * b, vecs)
        if b in (50, 150):
            store.flush()
        store.search(vecs[0], 3)
    store.delete(np.arange(4) + base)  # the first batch
    """
)


def test_two_processes_writing_one_store(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(folder), str(base)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for base in (0, 10_000)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.close()
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    want: dict[int, bytes] = {}
    for base in (0, 10_000):
        for b in range(1, 200):
            vecs = np.random.default_rng(base + b).standard_normal((4, 8)).astype(np.float32)
            want.update({base + 4 * b + i: v.tobytes() for i, v in enumerate(vecs)})
    with FaissStore(folder, "cls@8", 8) as store:
        assert contents(store) == want


CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from vitdex.search import FaissStore

    folder, start = sys.argv[1], int(sys.argv[2])
    store = FaissStore(folder, "cls@8", 64, wal_limit_bytes=48_000)
    b = start
    while True:
        vecs = np.random.default_rng(b).standard_normal((16, 64)).astype(np.float32)
        store.upsert(np.arange(16, dtype=np.int64) + 10**12 + 16 * b, vecs)
        print(b, flush=True)
        if b % 9 == 0:
            store.flush()
        b += 1
    """
)


def batch_vectors(b: int) -> dict[int, bytes]:
    vecs = np.random.default_rng(b).standard_normal((16, 64)).astype(np.float32)
    return {BIG + 16 * b + i: v.tobytes() for i, v in enumerate(vecs)}


@pytest.mark.slow
def test_kill_9_at_a_random_moment_keeps_exactly_the_acknowledged_batches(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "store"
    rnd = random.Random(os.getpid())
    start = 0
    for _ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(folder), str(start)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        acked: list[int] = []
        wanted = rnd.randint(3, 30)
        for line in child.stdout:
            acked.append(int(line))
            if len(acked) >= wanted:
                break
        threading.Event().wait(rnd.random() * 0.02)
        child.send_signal(signal.SIGKILL)
        rest = child.stdout.read()  # acknowledgements printed before the kill landed
        child.wait()
        assert child.returncode == -signal.SIGKILL
        acked += [int(x) for x in rest.split()]
        assert acked == list(range(start, start + len(acked)))

        with FaissStore(folder, "cls@8", 64) as store:
            got = contents(store)
        want: dict[int, bytes] = {}
        for b in range(acked[-1] + 1):
            want.update(batch_vectors(b))
        in_flight = batch_vectors(acked[-1] + 1)
        # The batch being written when the kill struck may have become durable before
        # its acknowledgement; it is then there whole, never in part.
        if set(got) != set(want):
            want.update(in_flight)
        assert got == want
        start = (max(got) - BIG) // 16 + 1


# ----------------------------------------------------------------------------- names


def test_sanitize_space_name() -> None:
    assert sanitize_space_name("cls") == "cls"
    assert sanitize_space_name("cls@8") == "cls_at_8"
    assert sanitize_space_name("mean@-4") == "mean_at_m4"
    names = [
        "cls",
        "cls@8",
        "cls@-8",
        "mean@-4",
        "mean@m4",
        "CLS@8",
        "Cls@8",
        "cls_at_8",
        "a/b",
        "a\\b",
        "..",
        ".",
        "a b",
        "é@1",
        "x" * 300,
        "x" * 301,
    ]
    folders = [sanitize_space_name(n) for n in names]
    assert len(set(folders)) == len(names)
    assert len({f.lower() for f in folders}) == len(names)  # case-insensitive filesystems
    for f in folders:
        assert f and len(f) <= 80 and all(c.isalnum() or c in "_-" for c in f)
        assert f.isascii() and f not in (".", "..")
    with pytest.raises(ValueError):
        sanitize_space_name("")
