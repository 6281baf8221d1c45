"""Near-duplicate edges, union-find and keeper rules on synthetic vectors in a real FaissStore."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from vitdex.db.jobs import JobCancelled
from vitdex.search.duplicates import (
    DEFAULT_THRESHOLD,
    MemberInfo,
    UnionFind,
    components,
    near_edges,
    suggest_keeper,
)
from vitdex.vectors.faiss.store import FaissStore

DIM = 64


def _unit(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    return out


def _near(rng: np.random.Generator, base: np.ndarray, cosine: float) -> np.ndarray:
    """A unit vector at exactly ``cosine`` to the unit vector ``base``."""
    noise = rng.standard_normal(base.shape[0])
    noise -= noise @ base * base
    noise = noise / np.linalg.norm(noise)
    return _unit(cosine * base + np.sqrt(1 - cosine**2) * noise)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FaissStore]:
    s = FaissStore(tmp_path / "store", "cls", DIM, durable=False)
    yield s
    s.close()


def _planted(
    rng: np.random.Generator, n_background: int
) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """Random background vectors (pairwise cosine near 0 in 64-d) plus planted groups."""
    vectors = list(_unit(rng.standard_normal((n_background, DIM))))
    ids = list(range(1, n_background + 1))
    groups: list[list[int]] = []
    next_id = 10_000
    for size, cosine in [(2, 0.97), (3, 0.95), (2, 0.92), (4, 0.99), (2, 0.999)]:
        base = _unit(rng.standard_normal(DIM))
        group = []
        for j in range(size):
            vectors.append(base if j == 0 else _near(rng, base, cosine))
            ids.append(next_id)
            group.append(next_id)
            next_id += 1
        groups.append(group)
    return np.asarray(ids, np.int64), np.stack(vectors), groups


def test_planted_groups_are_found_and_nothing_else(store: FaissStore) -> None:
    rng = np.random.default_rng(0)
    ids, vectors, planted = _planted(rng, 3000)
    store.upsert(ids, vectors)
    seen: list[tuple[int, int]] = []
    edges = near_edges(
        store, ids, DEFAULT_THRESHOLD, k=8, chunk=500, progress=lambda d, t: seen.append((d, t))
    )
    assert components(edges) == sorted(planted)
    assert seen[-1] == (len(ids), len(ids)) and len(seen) == 7  # one report per chunk
    # Below the pairs' cosine, a stricter cut splits the 0.92 pair off and keeps the rest.
    strict = components(near_edges(store, ids, 0.94, k=8))
    assert strict == sorted(g for g in planted if len(g) != 2 or g[0] != planted[2][0])


def test_a_group_larger_than_k_is_found_whole(store: FaissStore) -> None:
    """Forty identical vectors: every first search is saturated, the re-query completes it."""
    rng = np.random.default_rng(1)
    background = _unit(rng.standard_normal((500, DIM)))
    same = np.repeat(_unit(rng.standard_normal((1, DIM))), 40, axis=0)
    ids = np.arange(1, 541, dtype=np.int64)
    store.upsert(ids, np.concatenate([background, same]))
    edges = near_edges(store, ids, DEFAULT_THRESHOLD, k=16)
    assert components(edges) == [list(range(501, 541))]
    # Every pair of the forty is an edge, not only a spanning tree of them.
    assert len(edges) == 40 * 39 // 2


def test_skipped_pairs_and_hits_outside_the_scan(store: FaissStore) -> None:
    rng = np.random.default_rng(2)
    base = _unit(rng.standard_normal(DIM))
    vectors = np.stack([base, base, _near(rng, base, 0.95), _unit(rng.standard_normal(DIM))])
    ids = np.array([1, 2, 3, 4], np.int64)
    store.upsert(ids, vectors)
    # 1 and 2 are exact copies: their pair belongs to the exact group, not to near edges.
    exact = {(1, 2)}
    edges = near_edges(store, ids, 0.9, skip_pair=lambda a, b: (a, b) in exact)
    assert edges == {(1, 3), (2, 3)}
    # A component held together only by the exact pair is no near group.
    only_exact = near_edges(store, np.array([1, 2, 4]), 0.9, skip_pair=lambda a, b: (a, b) in exact)
    assert components(only_exact) == []
    # Photos outside the scanned ids (filtered out, marked) never join a group.
    assert near_edges(store, np.array([1, 4]), 0.9) == set()
    scanned = np.array([1, 3, 4])
    assert near_edges(store, scanned, 0.9, allowed_ids=scanned) == {(1, 3)}


def test_a_scan_stops_when_asked(store: FaissStore) -> None:
    store.upsert(np.arange(1, 11), _unit(np.random.default_rng(3).standard_normal((10, DIM))))
    with pytest.raises(JobCancelled):
        near_edges(store, np.arange(1, 11), 0.9, should_stop=lambda: True)


def test_union_find() -> None:
    uf = UnionFind()
    for a, b in [(5, 6), (1, 2), (2, 3), (6, 7), (9, 9)]:
        uf.union(a, b)
    assert uf.groups() == [[1, 2, 3], [5, 6, 7]]
    assert uf.find(3) == uf.find(1) != uf.find(5)
    assert components([]) == []


def _m(
    image_id: int,
    w: int | None = 100,
    h: int | None = 100,
    size: int = 1000,
    taken: datetime | None = None,
    mtime: int = 0,
) -> MemberInfo:
    return MemberInfo(image_id, w, h, size, taken, mtime)


def test_keeper_rules_and_their_reasons() -> None:
    keeper, reason = suggest_keeper([_m(1, 2016, 1512), _m(2, 4032, 3024), _m(3, 2016, 1512)])
    assert keeper == 2
    assert reason == "largest: 4032×3024 (12.2 MP); the others 2016×1512 (3.0 MP)"

    keeper, reason = suggest_keeper([_m(1, size=50_000), _m(2, size=2_400_000)])
    assert keeper == 2
    assert reason.startswith("same dimensions (100×100 (0.01 MP)); largest file: 2.4 MB")
    assert "least compressed" in reason

    old, new = datetime(2019, 5, 1, 12, 0), datetime(2023, 1, 1)
    keeper, reason = suggest_keeper([_m(1, taken=new), _m(2), _m(3, taken=old)])
    assert keeper == 3  # the oldest dated one; undated comes after dated
    assert reason == "same dimensions and file size; oldest: taken 2019-05-01 12:00:00"

    keeper, reason = suggest_keeper([_m(4, mtime=2_000_000_000), _m(7, mtime=1_000_000_000)])
    assert keeper == 7 and reason.startswith("same dimensions and file size; oldest file")

    keeper, reason = suggest_keeper([_m(8), _m(3)])
    assert keeper == 3 and "first one indexed" in reason

    # Unknown dimensions lose to known ones; pixels win over a larger file.
    keeper, _ = suggest_keeper([_m(1, None, None, size=9_999_999), _m(2, 10, 10, size=10)])
    assert keeper == 2
    with pytest.raises(ValueError):
        suggest_keeper([])
