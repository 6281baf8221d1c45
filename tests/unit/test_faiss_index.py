"""Approximate indexes of the FAISS store: specs, recall, freshness under writes, crashes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from vitdex.errors import ConfigError
from vitdex.vectors.faiss import ann as faiss_index
from vitdex.vectors.faiss.ann import IndexSpec, IndexSpecError, parse_index_spec
from vitdex.vectors.faiss.store import FaissStore

DIM = 64
N = 5000
BIG = 10**12


def clustered(n: int, seed: int = 0, centres: int = 50) -> npt.NDArray[np.float32]:
    """Normalised vectors around a few centres, like embeddings of similar photos."""
    rng = np.random.default_rng(1234)
    c = rng.standard_normal((centres, DIM)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = c[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, DIM)).astype(np.float32)
    out: npt.NDArray[np.float32] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


IDS = np.arange(BIG, BIG + N, dtype=np.int64)
VECS = clustered(N)
QUERIES = clustered(100, seed=1)


def truth(
    ids: npt.NDArray[np.int64], vecs: npt.NDArray[np.float32], q: npt.NDArray[np.float32], k: int
) -> list[set[int]]:
    order = np.argsort(-(q @ vecs.T), axis=1, kind="stable")[:, :k]
    return [{int(ids[j]) for j in row} for row in order]


def recall(store: FaissStore, q: npt.NDArray[np.float32], want: list[set[int]], **kw: Any) -> float:
    got = store.search(q, 10, **kw)
    return float(
        np.mean([len({h.id for h in row} & w) / 10 for row, w in zip(got, want, strict=True)])
    )


def open_store(folder: Path, **kw: Any) -> FaissStore:
    kw.setdefault("durable", False)
    return FaissStore(folder, "cls", DIM, **kw)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "faiss" / "cls"


# ----------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("flat", IndexSpec()),
        (" HNSW ", IndexSpec(kind="hnsw")),
        (
            "hnsw:M=16,efConstruction=100,efSearch=64",
            IndexSpec(kind="hnsw", m=16, ef_construction=100, ef_search=64),
        ),
        ("ivf", IndexSpec(kind="ivf")),
        (
            "ivf:nlist=1024,nprobe=8,code=sq8",
            IndexSpec(kind="ivf", nlist=1024, nprobe=8, code="sq8"),
        ),
        ("ivf:code=pq,pq_m=64,rerank=4", IndexSpec(kind="ivf", code="pq", pq_m=64, rerank=4)),
        ("ivf:nlist=auto", IndexSpec(kind="ivf")),
    ],
)
def test_parse_good_specs(text: str, want: IndexSpec) -> None:
    spec = parse_index_spec(text)
    assert spec == want
    assert parse_index_spec(spec.canonical()) == spec


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("annoy", "unknown index type"),
        ("hnsw:M", "key=value"),
        ("hnsw:M=", "key=value"),
        ("hnsw:nlist=4", "takes no 'nlist'"),
        ("flat:M=4", "takes no"),
        ("hnsw:M=0", "at least 1"),
        ("hnsw:M=abc", "whole number"),
        ("hnsw:M=4,M=8", "twice"),
        ("ivf:code=opq", "code must be one of"),
        ("ivf:pq_m=8", "code=pq only"),
    ],
)
def test_parse_bad_specs(text: str, match: str) -> None:
    with pytest.raises(IndexSpecError, match=match) as caught:
        parse_index_spec(text)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, ConfigError)


def test_pq_m_must_divide_dim(folder: Path) -> None:
    with open_store(folder) as store:
        store.upsert(IDS[:600], VECS[:600])
        with pytest.raises(IndexSpecError, match="divide"):
            store.reindex("ivf:nlist=4,code=pq,pq_m=7")
        assert store.describe()["exact"]


# ----------------------------------------------------------------------------- each type

# Measured on this data (recall@10 vs exact): flat 1.0, hnsw 1.0, ivf-flat 1.0,
# ivf-sq8 0.97, ivf-pq (16 bytes) 0.55. Bounds sit a little below.
TYPES = [
    ("flat", 1.0),
    ("hnsw", 0.95),
    ("ivf", 0.95),
    ("ivf:code=sq8", 0.9),
    ("ivf:code=pq,pq_m=16", 0.45),
]


@pytest.mark.parametrize(("spec", "bound"), TYPES)
def test_each_index_type(folder: Path, spec: str, bound: float) -> None:
    progress: list[tuple[str, float]] = []
    with open_store(folder) as store:
        store.upsert(IDS, VECS)
        before = store.get(IDS).tobytes()
        report = store.reindex(spec, progress=lambda stage, f: progress.append((stage, f)))
        assert report["count"] == N and report["fallback"] is None
        info = store.describe()
        assert info["exact"] == (spec == "flat") and info["trained"]
        assert info["index_spec"].startswith(spec.split(":")[0])
        assert info["changed_since_build"] == 0
        if spec != "flat":
            assert report["index_bytes"] > 0 and info["index_bytes"] == report["index_bytes"]
            assert info["index_type"] == report["index_type"] != "IDMap2,Flat"
            assert progress and progress[-1] == ("add", 1.0)
            assert info["bytes_on_disk"] > info["snapshot_bytes"] + info["index_bytes"] - 1
        # Raw vectors are the source of truth: bit-identical after the build.
        assert store.get(IDS).tobytes() == before

        assert recall(store, QUERIES, truth(IDS, VECS, QUERIES, 10)) >= bound

        # Filters: a broad one goes through the index, a narrow one is searched exactly.
        rng = np.random.default_rng(5)
        subset = np.sort(rng.choice(IDS, size=N // 3, replace=False))
        mask = np.isin(IDS, subset)
        got = store.search(QUERIES, 10, allowed_ids=subset)
        assert all({h.id for h in row} <= set(subset.tolist()) for row in got)
        assert all(len(row) == 10 for row in got)
        want_sub = truth(IDS[mask], VECS[mask], QUERIES, 10)
        assert recall(store, QUERIES, want_sub, allowed_ids=subset) >= bound - 0.05
        narrow = subset[:20]
        rows = store.search(QUERIES[:5], 10, allowed_ids=narrow)
        want_narrow = truth(narrow, store.get(narrow), QUERIES[:5], 10)
        assert [{h.id for h in row} for row in rows] == want_narrow

        # Writes after the build show at once: deleted ids never come back, replaced
        # vectors are found at their new place, new ids are found.
        top = {h.id for row in store.search(QUERIES, 10) for h in row}
        deleted = np.array(sorted(top), dtype=np.int64)[::2]
        assert store.delete(deleted) == deleted.size
        moved = IDS[[0, 1, 2]]
        store.upsert(moved, QUERIES[:3])
        store.upsert([7, 8], QUERIES[3:5])
        expected_changed = deleted.size + 5 if spec != "flat" else 0
        assert store.describe()["changed_since_build"] == expected_changed
        for allowed in (None, np.union1d(np.setdiff1d(IDS, IDS[3:40]), [7, 8])):
            got = store.search(QUERIES, 10, allowed_ids=allowed)
            returned = {h.id for row in got for h in row}
            assert not returned & set(deleted.tolist())
            for r, want_id in enumerate([*moved.tolist(), 7, 8]):
                assert got[r][0].id == want_id
                assert got[r][0].score == pytest.approx(1.0, abs=1e-5)
            assert all(row[i].score >= row[i + 1].score for row in got for i in range(9))
        left = np.setdiff1d(IDS, deleted)
        assert np.array_equal(store.get(left[3:]), VECS[np.isin(IDS, left)][3:])


def test_l2_metric_with_hnsw(folder: Path) -> None:
    with FaissStore(folder, "cls", DIM, metric="l2", durable=False) as store:
        store.upsert(IDS[:2000], VECS[:2000])
        store.reindex("hnsw:M=16")
        store.upsert([5], QUERIES[:1])
        hits = store.search(QUERIES[:1], 3)[0]
        assert hits[0].id == 5 and hits[0].score == pytest.approx(0.0, abs=1e-5)
        assert hits[1].score <= hits[0].score


# ----------------------------------------------------------------------------- lifecycle


def test_reopen_uses_the_saved_index_and_the_changed_ids(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_store(folder) as store:
        store.upsert(IDS, VECS)
        store.reindex("hnsw:M=16,efSearch=64")
        store.delete(IDS[:10])
        store.upsert(IDS[10:12], QUERIES[:2])
        want = store.search(QUERIES, 10)
    # No rebuild on reopen: building would raise.
    monkeypatch.setattr(faiss_index, "build_index", _no_build)
    monkeypatch.setattr("vitdex.vectors.faiss.approximate.build_index", _no_build)
    with open_store(folder) as again:
        info = again.describe()
        assert not info["exact"] and info["index_build"] == 1
        assert info["changed_since_build"] == 12  # replayed from the log
        assert again.search(QUERIES, 10) == want
        again.flush()  # the log is reset: the changed ids move to changed.<g>.npy
        assert (folder / "wal.bin").stat().st_size == 0
        assert list(folder.glob("changed.*.npy"))
    with open_store(folder) as third:
        assert third.describe()["changed_since_build"] == 12
        assert third.search(QUERIES, 10) == want
        assert json.loads((folder / "meta.json").read_text())["format"] == 2


def _no_build(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the index was rebuilt")


class SimulatedCrashError(Exception):
    pass


@pytest.mark.parametrize("first", ["none", "ivf"])
def test_crash_between_index_file_and_meta_leaves_a_usable_store(folder: Path, first: str) -> None:
    store = open_store(folder)
    store.upsert(IDS, VECS)
    if first != "none":
        store.reindex(first)
    store.upsert(IDS[:2], QUERIES[:2])
    want = store.get(IDS).tobytes()
    original = store._files.write_index

    def crashing(index: Any, name: str) -> int:
        size = original(index, name)
        if name.startswith("ann."):
            raise SimulatedCrashError(name)
        return size

    store._files.write_index = crashing  # type: ignore[method-assign]
    with pytest.raises(SimulatedCrashError):
        store.reindex("hnsw:M=8")
    store.close()
    assert any(p.name.endswith(".hnsw.faiss") for p in folder.iterdir())

    with open_store(folder) as again:
        info = again.describe()
        assert info["exact"] == (first == "none")
        assert info["index_type"] == ("IDMap2,Flat" if first == "none" else "IVF128,Flat")
        assert not any(p.name.endswith(".hnsw.faiss") for p in folder.iterdir())  # leftover gone
        assert again.get(IDS).tobytes() == want
        got = again.search(QUERIES[:2], 1)
        assert [row[0].id for row in got] == IDS[:2].tolist()
        again.reindex("hnsw:M=8")
        assert again.describe()["index_type"] == "IDMap,HNSW8,Flat"
        build = 1 if first == "none" else 2
        names = {p.name for p in folder.iterdir()}
        assert names == {"lock", "meta.json", "wal.bin", "index.1.faiss", "ann.1.hnsw.faiss"} or (
            first == "ivf"
            and names == {"lock", "meta.json", "wal.bin", "index.2.faiss", "ann.2.hnsw.faiss"}
        )
        assert again.describe()["index_build"] == build


def test_too_few_vectors_fall_back_to_exact_then_train(folder: Path) -> None:
    with open_store(folder) as store:
        store.upsert(IDS[:500], VECS[:500])
        report = store.reindex("ivf:nlist=40,nprobe=8")
        assert report["fallback"] and "1560" in report["fallback"]
        info = store.describe()
        assert info["exact"] and not info["trained"] and info["fallback"]
        assert info["index_spec"] == "ivf:nlist=40,nprobe=8,code=flat"
        assert recall(store, QUERIES, truth(IDS[:500], VECS[:500], QUERIES, 10)) == 1.0
        store.upsert(IDS[500:2000], VECS[500:2000])
        assert store.describe()["rebuild_due"]
        store.flush()  # enough vectors now: trained here
        info = store.describe()
        assert not info["exact"] and info["trained"] and info["fallback"] is None
        assert info["index_type"] == "IVF40,Flat"
        assert recall(store, QUERIES, truth(IDS[:2000], VECS[:2000], QUERIES, 10)) >= 0.9


def test_rebuild_on_flush_once_many_ids_changed(folder: Path) -> None:
    with open_store(folder, rebuild_fraction=0.1) as store:
        store.upsert(IDS[:2000], VECS[:2000])
        store.reindex("hnsw:M=8")
        store.upsert(IDS[2000:2150], VECS[2000:2150])
        store.flush()
        assert store.describe()["index_build"] == 1  # 150 of 2150: not yet
        store.upsert(IDS[2150:2300], VECS[2150:2300])
        assert store.describe()["rebuild_due"]
        store.flush()
        info = store.describe()
        assert info["index_build"] == 2 and info["changed_since_build"] == 0
        assert sorted(p.name for p in folder.glob("ann.*")) == ["ann.2.hnsw.faiss"]
        assert not list(folder.glob("changed.*"))


def test_reindex_flat_drops_the_index(folder: Path) -> None:
    with open_store(folder) as store:
        store.upsert(IDS[:1000], VECS[:1000])
        store.reindex("hnsw:M=8")
        store.delete(IDS[:5])
        store.flush()
        store.reindex("flat")
        info = store.describe()
        assert info["exact"] and info["index_type"] == "IDMap2,Flat"
        assert {p.name for p in folder.iterdir()} == {"lock", "meta.json", "wal.bin"} | {
            p.name for p in folder.glob("index.*.faiss")
        }
        assert json.loads((folder / "meta.json").read_text())["format"] == 1


# ----------------------------------------------------------------------------- scores


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("spec", ["ivf:nlist=32,code=sq8", "ivf:nlist=32,code=pq,pq_m=16,rerank=3"])
@pytest.mark.parametrize("stride", [1, 7])  # dense ids (position table) or sparse ones
def test_rescored_scores_are_exact(folder: Path, metric: str, spec: str, stride: int) -> None:
    ids = IDS[:2000] * stride
    with FaissStore(folder, "cls", DIM, metric=metric, durable=False) as store:
        store.upsert(ids, VECS[:2000])
        store.reindex(spec)
        store.search(QUERIES[:2], 10)
        # Removals shift the raw vectors' positions: the scores must follow.
        store.delete(ids[:30])
        store.upsert(ids[40:45], VECS[1000:1005])
        batched = store.search(QUERIES[:20], 10)
        for r, row in enumerate(batched):
            assert len(row) == 10
            vecs = store.get([h.id for h in row])
            q = QUERIES[r]
            want = vecs @ q if metric == "ip" else -((vecs - q) ** 2).sum(1)
            assert [h.score for h in row] == pytest.approx(want.tolist(), abs=1e-5)
            assert all(row[i].score >= row[i + 1].score for i in range(9))
            # One query at a time: the same hits as in the batch.
            single = store.search(q, 10)[0]
            assert [h.id for h in single] == [h.id for h in row]
            assert [h.score for h in single] == pytest.approx([h.score for h in row], abs=1e-5)


def test_rerank_zero_keeps_the_codes_scores(folder: Path) -> None:
    spec = parse_index_spec("ivf:nlist=32,code=sq8,rerank=0")
    assert spec.rerank == 0 and not spec.rescored and spec.approximate_scores
    assert parse_index_spec(spec.canonical()) == spec
    with pytest.raises(IndexSpecError, match="at least 0"):
        parse_index_spec("ivf:code=sq8,rerank=-1")
    with open_store(folder) as store:
        store.upsert(IDS[:2000], VECS[:2000])
        store.reindex(spec.canonical())
        assert recall(store, QUERIES, truth(IDS[:2000], VECS[:2000], QUERIES, 10)) >= 0.9
        row = store.search(QUERIES[0], 10)[0]
        exact = store.get([h.id for h in row]) @ QUERIES[0]
        # SQ8 scores approximate the inner products closely, without being them.
        assert [h.score for h in row] == pytest.approx(exact.tolist(), abs=0.05)


def test_many_changed_ids_merge_like_exact_search(folder: Path) -> None:
    # nprobe = nlist: the index itself is exact, so any difference is the merge's.
    with open_store(folder) as store:
        store.upsert(IDS[:3000], VECS[:3000])
        store.reindex("ivf:nlist=16,nprobe=16")
        rng = np.random.default_rng(3)
        changed = rng.choice(IDS[:3000], size=300, replace=False)
        store.upsert(changed, clustered(300, seed=9))
        store.delete(changed[:50])
        store.upsert(IDS[3000:3100], VECS[3000:3100])
        assert store.describe()["changed_since_build"] == 400
        ids = store.ids()
        want = truth(ids, store.get(ids), QUERIES, 10)
        for q in (QUERIES, QUERIES[:1]):
            got = store.search(q, 10)
            assert [{h.id for h in row} for row in got] == want[: len(q)]
            assert all(row[i].score >= row[i + 1].score for row in got for i in range(9))
        subset = np.union1d(ids[::2], changed[50:])
        got = store.search(QUERIES, 10, allowed_ids=subset)
        keep = np.isin(ids, subset)
        want_sub = truth(ids[keep], store.get(ids[keep]), QUERIES, 10)
        assert [{h.id for h in row} for row in got] == want_sub
