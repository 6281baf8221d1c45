"""Finding duplicate groups: near-duplicate edges by batched self-kNN in a space's own
index, union-find over them, and which member to suggest keeping.

Nothing here holds more than one chunk of vectors at a time beyond what the store keeps
itself, and no loop runs over all pairs: every vector asks the index for its ``k``
nearest neighbours, and only a vector whose ``k`` hits all reach the threshold (a group
larger than ``k``) asks again with a larger ``k``. That is what lets a scan of a million
vectors run on an approximate (IVF, HNSW) index in minutes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from vitdex.db.jobs import JobCancelled
from vitdex.vectors.store import VectorStore

__all__ = [
    "DEFAULT_K",
    "DEFAULT_THRESHOLD",
    "MemberInfo",
    "UnionFind",
    "components",
    "near_edges",
    "suggest_keeper",
]

#: The cosine at or above which two photos are near duplicates.
#:
#: Measured on a content-following test model (a ViT whose [CLS] vector is the photo's
#: 4x4 colour layout, see tests/integration/test_duplicates_library.py): re-encodes and
#: half-size copies score 0.9998 or more, crops keeping 90% of the frame 0.93 or more,
#: while 780 pairs of distinct photos top out at 0.68. 0.90 keeps every such copy and
#: leaves a wide margin below; it is also the usual cut of CNN/ViT near-duplicate tools.
#: Tighter crops (85%) fall to about 0.86: scan with a lower threshold to find them.
DEFAULT_THRESHOLD = 0.90
#: Neighbours asked per vector on the first pass.
DEFAULT_K = 16
#: Vectors per ``get`` + ``search`` round trip.
CHUNK = 4096
#: The largest ``k`` a saturated vector is searched again with.
K_MAX = 4096

Progress = Callable[[int, int], None]
Ids = npt.NDArray[np.int64]


class UnionFind:
    """Disjoint sets over arbitrary int ids, with path halving and union by size."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.size: dict[int, int] = {}

    def find(self, x: int) -> int:
        """The representative of ``x``'s set (``x`` joins as a singleton if new)."""
        parent = self.parent
        if x not in parent:
            parent[x], self.size[x] = x, 1
            return x
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        """Merge the sets of ``a`` and ``b``."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def groups(self) -> list[list[int]]:
        """Every set of two or more, ids ascending, sets ordered by their lowest id."""
        out: dict[int, list[int]] = {}
        for x in self.parent:
            out.setdefault(self.find(x), []).append(x)
        return sorted((sorted(g) for g in out.values() if len(g) > 1), key=lambda g: g[0])


def components(edges: Collection[tuple[int, int]]) -> list[list[int]]:
    """Connected components (two or more ids) of an undirected edge list."""
    uf = UnionFind()
    for a, b in edges:
        uf.union(a, b)
    return uf.groups()


def _chunks(ids: Ids, size: int) -> Iterator[Ids]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def near_edges(
    store: VectorStore,
    ids: Ids,
    threshold: float,
    *,
    k: int = DEFAULT_K,
    allowed_ids: Ids | None = None,
    skip_pair: Callable[[int, int], bool] | None = None,
    chunk: int = CHUNK,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> set[tuple[int, int]]:
    """Pairs ``(lower id, higher id)`` of ``ids`` whose cosine is at least ``threshold``.

    Each vector of ``ids`` is searched for its ``k`` nearest (``allowed_ids`` restricts
    the hits in the store; hits outside ``ids`` are dropped). A vector whose every hit
    reaches the threshold may have more such neighbours than ``k`` showed, so it is
    searched again with four times ``k`` until one hit falls below (or ``K_MAX``).
    ``skip_pair(a, b)`` leaves out pairs (exact copies, decided pairs). ``should_stop``
    is polled between chunks (true: :class:`JobCancelled`).
    """
    wanted = np.asarray(ids, dtype=np.int64)
    members = set(wanted.tolist())
    total = len(wanted)
    edges: set[tuple[int, int]] = set()
    report = progress or (lambda _d, _t: None)
    stop = should_stop or (lambda: False)
    k = max(2, int(k))
    done = 0
    for part in _chunks(wanted, chunk):
        if stop():
            raise JobCancelled()
        vectors = store.get(part)
        pending: list[tuple[int, npt.NDArray[np.float32]]] = []
        results = store.search(vectors, k, allowed_ids=allowed_ids)
        for row, (query_id, hits) in enumerate(zip(part.tolist(), results, strict=True)):
            _collect(query_id, hits, threshold, members, edges, skip_pair)
            if len(hits) >= k and hits[-1].score >= threshold:
                pending.append((query_id, vectors[row]))
        if pending:
            _requery(store, pending, k, threshold, members, edges, skip_pair, allowed_ids)
        done += len(part)
        report(done, total)
    return edges


def _collect(
    query_id: int,
    hits: Sequence[tuple[int, float]],
    threshold: float,
    members: set[int],
    edges: set[tuple[int, int]],
    skip_pair: Callable[[int, int], bool] | None,
) -> None:
    for hit_id, score in hits:
        if score < threshold:
            break  # hits come best first
        if hit_id == query_id or hit_id not in members:
            continue
        pair = (query_id, hit_id) if query_id < hit_id else (hit_id, query_id)
        if skip_pair is None or not skip_pair(*pair):
            edges.add(pair)


def _requery(
    store: VectorStore,
    pending: list[tuple[int, npt.NDArray[np.float32]]],
    k: int,
    threshold: float,
    members: set[int],
    edges: set[tuple[int, int]],
    skip_pair: Callable[[int, int], bool] | None,
    allowed_ids: Ids | None,
) -> None:
    """Search saturated vectors again with a larger ``k`` until each is complete."""
    size = k
    while pending and size < K_MAX:
        size = min(size * 4, K_MAX)
        queries = np.stack([v for _, v in pending])
        still: list[tuple[int, npt.NDArray[np.float32]]] = []
        for (query_id, vector), hits in zip(
            pending, store.search(queries, size, allowed_ids=allowed_ids), strict=True
        ):
            _collect(query_id, hits, threshold, members, edges, skip_pair)
            if len(hits) >= size and hits[-1].score >= threshold:
                still.append((query_id, vector))
        pending = still


# --------------------------------------------------------------------------- keeper


@dataclass(frozen=True)
class MemberInfo:
    """What the keeper rules look at for one photo."""

    image_id: int
    width: int | None
    height: int | None
    size: int
    taken_at: datetime | None
    mtime_ns: int

    @property
    def pixels(self) -> int:
        """Width times height (0 when unknown)."""
        return (self.width or 0) * (self.height or 0)

    def dims(self) -> str:
        """``4032×3024 (12.2 MP)``, or ``unknown size``."""
        if not self.pixels:
            return "unknown size"
        mp = self.pixels / 1e6
        return (
            f"{self.width}×{self.height} ({mp:.1f} MP)"
            if mp >= 1
            else f"{self.width}×{self.height} ({mp:.2f} MP)"
        )


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover - the loop always returns


def _rank(m: MemberInfo) -> tuple[int, int, int, float, int, int]:
    dated = m.taken_at is not None
    when = m.taken_at.timestamp() if m.taken_at is not None else 0.0
    return (-m.pixels, -m.size, 0 if dated else 1, when, m.mtime_ns, m.image_id)


def _others(values: Sequence[str]) -> str:
    uniq = list(dict.fromkeys(values))
    return ", ".join(uniq[:3]) + (f" and {len(uniq) - 3} more" if len(uniq) > 3 else "")


def suggest_keeper(members: Sequence[MemberInfo]) -> tuple[int, str]:
    """The member to keep and a sentence saying why.

    Rules, in order: most pixels (width × height); then the larger file (less
    compression); then the oldest (taken earliest; undated after dated; then the file's
    mtime); then the lowest id, so the suggestion is stable.
    """
    if not members:
        raise ValueError("a duplicate group has members")
    ranked = sorted(members, key=_rank)
    best, rest = ranked[0], ranked[1:]
    if not rest:
        return best.image_id, "the only member"
    if any(m.pixels < best.pixels for m in rest):
        others = _others([m.dims() for m in rest])
        return best.image_id, f"largest: {best.dims()}; the others {others}"
    if any(m.size < best.size for m in rest):
        others = _others([_human_bytes(m.size) for m in rest])
        return best.image_id, (
            f"same dimensions ({best.dims()}); largest file: {_human_bytes(best.size)} "
            f"(the others {others}), so the least compressed"
        )
    if best.taken_at is not None and any(
        m.taken_at is None or m.taken_at > best.taken_at for m in rest
    ):
        return best.image_id, (
            f"same dimensions and file size; oldest: taken {best.taken_at:%Y-%m-%d %H:%M:%S}"
        )
    if any(m.mtime_ns > best.mtime_ns for m in rest):
        stamp = datetime.fromtimestamp(best.mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")
        return best.image_id, f"same dimensions and file size; oldest file (modified {stamp})"
    return best.image_id, "identical in dimensions, size and date; the first one indexed"
