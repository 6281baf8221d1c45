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
from vitdex.vectors import (
    FaissStore,
    SearchHit,
    VectorNotFoundError,
    VectorStore,
    compare,
    sanitize_space_name,
)
from vitdex.vectors.faiss.wal import HEADER

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
    return HEADER.size + 8 * n + 4 * n * dim


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


@pytest.mark.parametrize("cut", [3, HEADER.size + 5, record_size(4) - 1])
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
    data[2 * record_size(4) + HEADER.size + 20] ^= 0xFF  # a payload byte of record 3
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


def crash_after(part: object, method: str) -> None:
    """Make ``part.method`` (the store or one of its parts) crash once it has run."""
    original = getattr(part, method)

    def crashing(*args: Any, **kwargs: Any) -> Any:
        original(*args, **kwargs)
        raise SimulatedCrashError(method)

    setattr(part, method, crashing)


def crash_before(part: object, method: str) -> None:
    def crashing(*args: Any, **kwargs: Any) -> Any:
        raise SimulatedCrashError(method)

    setattr(part, method, crashing)


def crash_with_temp_snapshot(store: FaissStore) -> None:
    def crashing(name: str, *_: Any) -> int:
        faiss.write_index(store._raw.base, str(store.folder / f"{name}.tmp"))
        raise SimulatedCrashError("snapshot rename")

    store._files.write_snapshot = crashing


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
        crash_after(store._files, "write_snapshot")
    elif step == "after_meta":
        crash_after(store._files, "write_meta")
    elif step == "after_wal_reset":
        crash_after(store._wal, "truncate")
    else:
        crash_before(store._files, "remove")
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


def test_compare_finds_strays_and_missing_and_changes_nothing(folder: Path) -> None:
    with open_store(folder) as store:
        store.upsert(np.arange(1, 11), unit(10))
        strays, missing = compare(store, np.arange(5, 16))
        np.testing.assert_array_equal(strays, [1, 2, 3, 4])
        np.testing.assert_array_equal(missing, [11, 12, 13, 14, 15])
        np.testing.assert_array_equal(store.ids(), np.arange(1, 11))
        store.delete(strays)
        strays, missing = compare(store, np.arange(5, 11))
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
    from vitdex.vectors import FaissStore

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
    from vitdex.vectors import FaissStore

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


# ----------------------------------------------------------------------------- mapped base


def exact_top(
    model: dict[int, npt.NDArray[np.float32]], q: npt.NDArray[np.float32], k: int, metric: str
) -> list[list[tuple[int, float]]]:
    """Brute force over a dict of id -> vector: (id, score) best first, higher is closer."""
    ids = np.array(sorted(model), dtype=np.int64)
    vecs = np.stack([model[int(i)] for i in ids]).astype(np.float64)
    if metric == "ip":
        scores = q.astype(np.float64) @ vecs.T
    else:
        scores = -(((q.astype(np.float64)[:, None, :] - vecs[None]) ** 2).sum(-1))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[(int(ids[j]), float(scores[r, j])) for j in row] for r, row in enumerate(order)]


def assert_search_matches(
    store: FaissStore,
    model: dict[int, npt.NDArray[np.float32]],
    q: npt.NDArray[np.float32],
    k: int,
    metric: str = "ip",
    allowed: npt.NDArray[np.int64] | None = None,
) -> None:
    sub = model if allowed is None else {i: v for i, v in model.items() if i in set(allowed)}
    got = store.search(q, k, allowed_ids=allowed)
    if not sub:
        assert got == [[] for _ in range(len(q))]
        return
    want = exact_top(sub, q, k, metric)
    for row, truth in zip(got, want, strict=True):
        assert [h.id for h in row] == [i for i, _ in truth]
        assert [h.score for h in row] == pytest.approx([s for _, s in truth], abs=1e-4)


def test_base_is_memory_mapped_after_flush_and_reopen(folder: Path) -> None:
    dim = 256  # raw vectors (1 KiB each) dwarf the ~100 bytes of bookkeeping per id
    ids = np.arange(BIG, BIG + 500, dtype=np.int64)
    vecs = unit(500, dim=dim, seed=40)
    with FaissStore(folder, "cls@8", dim, durable=False) as store:
        store.upsert(ids, vecs)
        info = store.describe()
        # No snapshot yet: every vector is in the overlay, resident.
        assert info["raw_storage"] == "memory" and info["overlay_count"] == 500
        assert info["memory_bytes_per_vector"] >= 4 * dim and info["mapped_bytes"] == 0
        store.flush()
        info = store.describe()
        assert info["raw_storage"] == "mapped"
        assert (info["overlay_count"], info["superseded_count"]) == (0, 0)
        assert info["mapped_bytes"] == 500 * 4 * dim
        assert info["mapped_bytes_per_vector"] == 4 * dim
        assert info["memory_bytes_per_vector"] < dim  # ids only: the vectors are mapped
        assert info["resident_bytes"] == pytest.approx(500 * info["memory_bytes_per_vector"])
    with FaissStore(folder, "cls@8", dim, durable=False) as store:
        info = store.describe()
        assert info["raw_storage"] == "mapped" and info["mapped_bytes"] == 500 * 4 * dim
        assert store.get(ids[::-1]).tobytes() == vecs[::-1].tobytes()
        # Writes land in the overlay: resident memory grows by what was written only.
        store.upsert(ids[:10], unit(10, dim=dim, seed=41))
        store.upsert([1, 2], unit(2, dim=dim, seed=42))
        store.delete(ids[10:15])
        info = store.describe()
        assert (info["overlay_count"], info["superseded_count"]) == (12, 15)
        assert info["count"] == 497 and info["mapped_bytes"] == 500 * 4 * dim
        assert 12 * 4 * dim < info["resident_bytes"] < 12 * 4 * dim + 2000 * 250


def test_snapshot_file_is_byte_for_byte_what_faiss_writes(folder: Path) -> None:
    """The snapshot is streamed, not written by FAISS: it must be the very same bytes."""
    for metric in ("ip", "l2"):
        path = folder / metric
        with FaissStore(path, "cls@8", DIM, metric=metric, durable=False) as store:
            store.upsert(np.arange(40) + BIG, unit(40, seed=43))
            store.flush()
            store.upsert(np.arange(5) + BIG, unit(5, seed=44))  # overwritten base ids
            store.delete(np.arange(10, 14) + BIG)
            store.upsert([7, 8], unit(2, seed=45))  # new ids
            store.delete([8])
            store.flush()
            base = store._raw.base
            order = faiss.vector_to_array(base.id_map)
            flat = faiss.IndexFlatIP(DIM) if metric == "ip" else faiss.IndexFlatL2(DIM)
            reference = faiss.IndexIDMap2(flat)
            reference.add_with_ids(store.get(order), order)
            written = (path / f"index.{store.describe()['generation']}.faiss").read_bytes()
            assert written == faiss.serialize_index(reference).tobytes()
            assert store.count() == 40 - 4 + 1
    empty = folder / "empty"
    with open_store(empty) as store:
        store.flush()
        reference = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
        assert (empty / "index.1.faiss").read_bytes() == faiss.serialize_index(reference).tobytes()
        assert store.count() == 0 and store.search(unit(1), 3) == [[]]


def test_writes_after_a_snapshot_leave_the_base_untouched(folder: Path) -> None:
    ids = np.arange(BIG, BIG + 300, dtype=np.int64)
    with open_store(folder) as store:
        store.upsert(ids, unit(300, seed=46))
        store.flush()
        base = store._raw.base
        before = (base.ntotal, faiss.vector_to_array(base.id_map).tobytes())
        codes = store._raw.codes(base).tobytes()
        store.upsert(ids[:50], unit(50, seed=47))  # overwrite base ids
        store.upsert(ids[:20], unit(20, seed=48))  # overwrite them again (in the overlay)
        store.delete(ids[50:80])  # delete base ids
        store.delete(ids[:5])  # delete overlay ids
        store.upsert(ids[50:55], unit(5, seed=49))  # re-insert deleted base ids
        store.upsert(np.arange(5) + 7, unit(5, seed=50))  # new ids
        store.search(unit(3, seed=51), 10)
        store.search(unit(3, seed=51), 10, allowed_ids=ids[::3])
        assert store._raw.base is base
        assert (base.ntotal, faiss.vector_to_array(base.id_map).tobytes()) == before
        assert store._raw.codes(base).tobytes() == codes
        assert store.count() == 300 - 30 - 5 + 5 + 5


# A store written after its snapshot, in a child process: were any write to reach the
# mapped base, FAISS would abort that process (SIGABRT), not raise.
NO_ABORT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from vitdex.vectors import FaissStore

    folder = sys.argv[1]
    rng = np.random.default_rng(0)
    store = FaissStore(folder, "cls@8", 16, durable=False, wal_limit_bytes=1 << 14)
    store.upsert(np.arange(400), rng.standard_normal((400, 16)).astype(np.float32))
    store.flush()
    for step in range(60):  # crosses the log limit: automatic snapshots in between
        ids = rng.choice(500, size=int(rng.integers(1, 12)), replace=False)
        if step % 3 == 0:
            store.delete(ids)
        else:
            store.upsert(ids, rng.standard_normal((ids.size, 16)).astype(np.float32))
        store.search(rng.standard_normal((2, 16)).astype(np.float32), 5)
        store.get(store.ids()[:3])
    store.reindex("ivf:nlist=4,nprobe=4,code=sq8")
    store.upsert(np.arange(30), rng.standard_normal((30, 16)).astype(np.float32))
    store.delete(np.arange(30, 40))
    store.search(rng.standard_normal((2, 16)).astype(np.float32), 5)
    store.flush()
    store.close()
    again = FaissStore(folder, "cls@8", 16, durable=False)
    again.upsert(np.arange(5), rng.standard_normal((5, 16)).astype(np.float32))
    again.delete(np.arange(5, 10))
    print(again.count(), again.describe()["raw_storage"])
    """
)


def test_writes_to_a_mapped_store_never_abort(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", NO_ABORT, str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    count, storage = done.stdout.split()
    assert int(count) > 0 and storage == "mapped"


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_search_get_count_across_base_and_overlay(folder: Path, metric: str) -> None:
    """Random writes around snapshots: every read agrees with a dict, live, after replay
    of the log onto the mapped base, and after folding it into a new base."""
    rng = np.random.default_rng(52)
    model: dict[int, npt.NDArray[np.float32]] = {}
    q = unit(6, seed=53)

    def check(store: FaissStore) -> None:
        assert store.count() == len(model)
        np.testing.assert_array_equal(store.ids(), sorted(model))
        if model:
            order = np.array(sorted(model), dtype=np.int64)[::-1]
            assert store.get(order).tobytes() == np.stack([model[int(i)] for i in order]).tobytes()
        assert_search_matches(store, model, q, 8, metric)
        assert_search_matches(store, model, q[:2], 1000, metric)  # k beyond the store
        allowed = rng.choice(90, size=25, replace=False).astype(np.int64) + BIG
        assert_search_matches(store, model, q, 6, metric, allowed)

    with FaissStore(folder, "cls@8", DIM, metric=metric, durable=False) as store:
        for round_ in range(4):
            for step in range(25):
                ids = rng.choice(90, size=int(rng.integers(1, 10))) + BIG
                if rng.random() < 0.35:
                    store.delete(ids)
                    for i in ids:
                        model.pop(int(i), None)
                else:
                    vecs = unit(len(ids), seed=2000 + 100 * round_ + step)
                    store.upsert(ids, vecs)
                    model.update(zip(ids.tolist(), vecs, strict=True))
            check(store)
            with FaissStore(folder, "cls@8", DIM, metric=metric, durable=False) as replayed:
                check(replayed)  # the same base + the log, replayed into a fresh overlay
            if round_ % 2 == 0:
                store.flush()
                assert store.describe()["overlay_count"] == 0
                check(store)


def test_failed_mapping_after_commit_reloads_from_disk(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Meta names the new snapshot but mapping it fails: the same object recovers."""
    ids = np.arange(BIG, BIG + 64, dtype=np.int64)
    store = open_store(folder)
    store.upsert(ids, unit(64, seed=54))
    store.flush()
    store.upsert(ids[:8], unit(8, seed=55))
    store.delete(ids[8:12])
    want = contents(store)
    crash_before(store, "_map_new_base")
    with pytest.raises(SimulatedCrashError):
        store.flush()
    monkeypatch.undo()
    del store._map_new_base  # the instance attribute: the class's method again
    assert contents(store) == want  # reloaded: generation 2 mapped, the stale log skipped
    info = store.describe()
    assert info["generation"] == 2 and info["overlay_count"] == 0
    assert (folder / "wal.bin").stat().st_size == 0
    store.upsert([5], unit(1, seed=56))
    store.close()
    with open_store(folder) as again:
        want[5] = unit(1, seed=56)[0].tobytes()
        assert contents(again) == want


def test_replay_onto_the_mapped_base_after_a_crash(folder: Path) -> None:
    """Writes after a snapshot and no flush (a crash): reopening maps the base and
    replays the log into the overlay; searches see the overwrites and deletes."""
    ids = np.arange(BIG, BIG + 200, dtype=np.int64)
    vecs = unit(200, seed=57)
    store = open_store(folder)
    store.upsert(ids, vecs)
    store.flush()
    new = unit(30, seed=58)
    store.upsert(ids[:30], new)
    store.delete(ids[30:60])
    store.upsert([11, 12], unit(2, seed=59))
    # Not closed: the descriptors are dropped as a killed process's would be.
    store._release()
    model = {int(i): v for i, v in zip(ids, vecs, strict=True)}
    model.update(zip(ids[:30].tolist(), new, strict=True))
    for i in ids[30:60]:
        del model[int(i)]
    model.update(zip([11, 12], unit(2, seed=59), strict=True))
    with open_store(folder) as again:
        info = again.describe()
        assert info["raw_storage"] == "mapped"
        assert (info["overlay_count"], info["superseded_count"]) == (32, 60)
        assert contents(again) == {i: v.tobytes() for i, v in model.items()}
        assert_search_matches(again, model, new[:5], 5)
        for i in range(5):
            assert again.search(new[i], 1)[0][0].id == ids[i]
        assert not {h.id for h in again.search(vecs[30:60], 3)[0]} & set(ids[30:60].tolist())


RSS = textwrap.dedent(
    """
    import sys
    import numpy as np
    from vitdex.vectors import FaissStore

    def rss():
        fields = {}
        with open("/proc/self/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile"):
                    fields[key] = int(value.split()[0]) * 1024
        return fields

    store = FaissStore(sys.argv[1], "cls@8", int(sys.argv[2]), durable=False)
    q = np.random.default_rng(0).standard_normal((4, int(sys.argv[2]))).astype(np.float32)
    before = rss()
    store.count()
    store.search(q, 10)  # exact: reads every vector
    store.get(store.ids()[::97])
    after = rss()
    print(after["RssAnon"] - before["RssAnon"], after["RssFile"] - before["RssFile"])
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_opening_and_searching_maps_the_vectors_instead_of_copying_them(
    tmp_path: Path,
) -> None:
    dim, n = 256, 30_000  # 30 MB of raw vectors
    folder = tmp_path / "store"
    with FaissStore(folder, "cls@8", dim, durable=False) as store:
        for lo in range(0, n, 10_000):
            store.upsert(np.arange(lo, lo + 10_000), unit(10_000, dim=dim, seed=lo))
        store.flush()
    if "RssAnon" not in Path("/proc/self/status").read_text():
        pytest.skip("this kernel reports no RssAnon")
    done = subprocess.run(
        [sys.executable, "-c", RSS, str(folder), str(dim)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    anon, mapped = (int(x) for x in done.stdout.split())
    raw = n * dim * 4
    # Ids, the reverse map and the Python id set: about 100 bytes a vector, not 1 KiB.
    assert anon < raw / 3, (anon, raw)
    assert mapped > raw / 2, (mapped, raw)  # the search read the file's pages in place


def test_without_mmap_support_the_base_is_read_into_memory(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAISS before 1.11 has no IO_FLAG_MMAP_IFC: the same store, the base in memory."""
    monkeypatch.setattr("vitdex.vectors.faiss.layout.MMAP_FLAG", 0)
    ids = np.arange(BIG, BIG + 100, dtype=np.int64)
    with open_store(folder) as store:
        store.upsert(ids, unit(100, seed=60))
        store.flush()
        store.upsert(ids[:10], unit(10, seed=61))
        store.delete(ids[10:20])
        want = contents(store)
        info = store.describe()
        assert info["raw_storage"] == "memory" and info["mapped_bytes"] == 0
        assert info["memory_bytes_per_vector"] > 4 * DIM  # the vectors are resident
    with open_store(folder) as again:
        assert contents(again) == want
        again.flush()
        assert contents(again) == want and again.describe()["overlay_count"] == 0
