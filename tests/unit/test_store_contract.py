"""One contract suite run against every vector-store backend, comparing their results.

The checks are plain functions taking a :class:`Backend` (a store factory plus whether the
backend filters on payloads), so the integration suite runs the same checks against a
Qdrant server. Every search is compared with numpy brute force; filtered searches with
brute force over the ids whose payload satisfies the filter, computed here in Python.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, cast

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from qdrant_client import models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
from qdrant_client.qdrant_remote import QdrantRemote

from vitdex.errors import SpaceMismatchError, StoreError
from vitdex.search.examples import combine, page_above, rule_scores
from vitdex.vectors.faiss.store import FaissStore
from vitdex.vectors.migrate import migrate_store
from vitdex.vectors.qdrant import QdrantStore, search_filter_to_qdrant
from vitdex.vectors.store import (
    SearchFilter,
    SearchHit,
    VectorNotFoundError,
    VectorStore,
    image_payload,
)

DIM = 64
N = 2000
K = 10
SPACE = "cls@8"
BASE_ID = 10**9  # SQL ids are arbitrary int64, nowhere near positions
SCORE_ATOL = 1e-4
# Scores closer than this may come back in either order from different float kernels.
TIE = 1e-5

Results = dict[str, list[list[SearchHit]]]


# ---------------------------------------------------------------------------- backends


@dataclass
class Backend:
    """A named store factory: ``open(space, dim)`` opens (or reopens) that space's store.

    ``filters`` says whether the backend applies :class:`SearchFilter` on its payloads;
    otherwise filters are handed to it as ``allowed_ids`` (as the service does for FAISS).
    """

    name: str
    open: Callable[[str, int], VectorStore]
    filters: bool
    opened: list[VectorStore] = field(default_factory=list)

    def store(self, space: str = SPACE, dim: int = DIM) -> VectorStore:
        """Open a store, remembered so that :meth:`close_all` can close it."""
        store = self.open(space, dim)
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        """Close every store this backend opened (closing twice is harmless)."""
        for store in self.opened:
            store.close()
        self.opened.clear()


class _FilteringStore(Protocol):
    def search(
        self,
        queries: npt.NDArray[Any],
        k: int,
        *,
        allowed_ids: npt.NDArray[Any] | None = None,
        filter: SearchFilter | None = None,
    ) -> list[list[SearchHit]]: ...


def faiss_backend(folder: Path) -> Backend:
    """FAISS stores under ``folder``, one subfolder per space, without fsyncs (speed)."""

    def open_faiss(space: str, dim: int) -> VectorStore:
        return FaissStore(folder / space.replace("@", "_"), space, dim, durable=False)

    return Backend("faiss", open_faiss, filters=False)


def qdrant_local_backend(folder: Path) -> Backend:
    """Qdrant stores in qdrant-client's local mode, all spaces in one folder."""

    def open_qdrant(space: str, dim: int) -> VectorStore:
        return QdrantStore(space, dim, path=folder)

    return Backend("qdrant", open_qdrant, filters=True)


@contextlib.contextmanager
def ram_folder(fallback: Path) -> Iterator[Path]:
    """A scratch folder in memory (``/dev/shm``) when there is one, else ``fallback``.

    Qdrant's local mode commits every point to SQLite with an fsync; in memory the same
    code runs without waiting for a (possibly busy) disk, several times faster.
    """
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield fallback
        return
    folder = Path(tempfile.mkdtemp(prefix="vitdex-test-", dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def fast_path(tmp_path: Path) -> Iterator[Path]:
    with ram_folder(tmp_path) as folder:
        yield folder


@pytest.fixture(params=["faiss", "qdrant"])
def backend(request: pytest.FixtureRequest, fast_path: Path) -> Iterator[Backend]:
    made = _make_backend(str(request.param), fast_path)
    yield made
    made.close_all()


def _make_backend(name: str, folder: Path) -> Backend:
    if name == "faiss":
        return faiss_backend(folder / "faiss")
    return qdrant_local_backend(folder / "qdrant")


# ---------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Dataset:
    """Clustered unit vectors under large ids, with an image payload for each."""

    ids: npt.NDArray[np.int64]
    vectors: npt.NDArray[np.float32]
    payloads: list[dict[str, Any]]
    queries: npt.NDArray[np.float32]


def unit(x: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Rows of ``x`` scaled to length one, as float32."""
    x = np.asarray(x, dtype=np.float32)
    out: npt.NDArray[np.float32] = x / np.linalg.norm(x, axis=-1, keepdims=True)
    return out


LIBRARIES = (1, 2, 3)
# "/photos/1/trips" and "/photos/1/trips-old" share a string prefix but not a folder.
FOLDERS = ("trips", "trips-old", "trips/2019", "trips/2019/rome", "family", "family/kids")
MAKES = {"Canon": ("EOS R5", "EOS 5D"), "Apple": ("iPhone 15",), "Nikon": ("Z6",)}
LABELS = ("cat", "dog", "beach", "mountain", "car", "food", "person", "tree")
EPOCH = datetime(2015, 1, 1)


@functools.cache
def dataset(n: int = N, dim: int = DIM, seed: int = 7) -> Dataset:
    """``n`` vectors around 25 centres (so neighbours are clustered, as photo embeddings
    are), random metadata, and 6 queries: 4 near centres, 2 random."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((25, dim)))
    which = rng.integers(0, len(centres), n)
    vectors = unit(centres[which] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32))
    ids = BASE_ID + rng.choice(50 * n, size=n, replace=False).astype(np.int64)
    payloads = []
    for i in range(n):
        library = int(rng.choice(LIBRARIES))
        folder = FOLDERS[int(rng.integers(len(FOLDERS)))]
        make = None if rng.random() < 0.15 else str(rng.choice(list(MAKES)))
        model = None if make is None else str(rng.choice(MAKES[make]))
        # Whole seconds: taken_at round-trips through float seconds exactly.
        taken = (
            None
            if rng.random() < 0.1
            else EPOCH + timedelta(seconds=int(rng.integers(300_000_000)))
        )
        labels = [str(x) for x in rng.choice(LABELS, size=int(rng.integers(0, 4)), replace=False)]
        payloads.append(
            image_payload(
                library_id=library,
                path=f"/photos/{library}/{folder}/img_{i:05d}.jpg",
                taken_at=taken,
                camera_make=make,
                camera_model=model,
                labels=labels,
            )
        )
    queries = np.concatenate([centres[:4], unit(rng.standard_normal((2, dim)))])
    queries = unit(queries + 0.05 * rng.standard_normal(queries.shape).astype(np.float32))
    return Dataset(ids, vectors, payloads, queries)


def matches(payload: Mapping[str, Any], flt: SearchFilter) -> bool:
    """Ground truth: whether an image payload satisfies ``flt``, decided in plain Python
    from the path and values (not from the ``dirs`` list the backends match on)."""
    if flt.library_ids and payload["library_id"] not in flt.library_ids:
        return False
    if flt.path_prefix is not None:
        folder = flt.path_prefix.rstrip("/") + "/"
        if not str(payload["path"]).startswith(folder):
            return False
    taken = payload["taken_at"]
    if flt.taken_after is not None and (taken is None or taken < seconds(flt.taken_after)):
        return False
    if flt.taken_before is not None and (taken is None or taken >= seconds(flt.taken_before)):
        return False
    # A payload backend gets a make or model as the stored spellings it stands for.
    for key, value, spelt in (
        ("camera_make", flt.camera_make, flt.camera_make_spellings),
        ("camera_model", flt.camera_model, flt.camera_model_spellings),
    ):
        if value is not None and payload[key] not in (spelt if spelt is not None else (value,)):
            return False
    return flt.label is None or flt.label in payload["labels"]


def seconds(when: datetime) -> float:
    """EXIF wall-clock time as seconds since the epoch (EPOCH-relative, naive-safe)."""
    return (when - datetime(1970, 1, 1)).total_seconds()


def filters(data: Dataset) -> dict[str, SearchFilter]:
    """Every filter kind alone, combined, at folder boundaries and on exact bounds."""
    on_bound = next(p["taken_at"] for p in data.payloads if p["taken_at"] is not None)
    bound = datetime(1970, 1, 1) + timedelta(seconds=on_bound)
    return {
        "library": SearchFilter(library_ids=(2,)),
        "libraries": SearchFilter(library_ids=(1, 3)),
        "folder": SearchFilter(path_prefix="/photos/1/trips"),
        "folder_slash": SearchFilter(path_prefix="/photos/1/trips/"),
        "folder_nested": SearchFilter(path_prefix="/photos/2/trips/2019"),
        "folder_root": SearchFilter(path_prefix="/"),
        "folder_partial_name": SearchFilter(path_prefix="/photos/1/trip"),
        "after": SearchFilter(taken_after=datetime(2020, 6, 1)),
        "before": SearchFilter(taken_before=datetime(2017, 3, 1, 12, 30)),
        "between": SearchFilter(
            taken_after=datetime(2018, 1, 1), taken_before=datetime(2019, 1, 1)
        ),
        "after_on_bound": SearchFilter(taken_after=bound),
        "before_on_bound": SearchFilter(taken_before=bound),
        "make": SearchFilter(camera_make="Apple"),
        "make_spelt": SearchFilter(camera_make="apple", camera_make_spellings=("Apple",)),
        "makes_spelt": SearchFilter(camera_make="x", camera_make_spellings=("Apple", "Nikon")),
        "model_spelt": SearchFilter(
            camera_make_spellings=("Apple", "Nikon"),
            camera_make="a",
            camera_model="z6",
            camera_model_spellings=("Z6",),
        ),
        "model": SearchFilter(camera_model="EOS 5D"),
        "label": SearchFilter(label="beach"),
        "combined": SearchFilter(
            library_ids=(1, 2),
            path_prefix="/photos/1/family",
            taken_after=datetime(2016, 1, 1),
            camera_make="Canon",
            label="dog",
        ),
        "tiny": SearchFilter(
            library_ids=(3,), path_prefix="/photos/3/trips/2019/rome", label="car"
        ),
        "nothing": SearchFilter(camera_make="Leica"),
    }


# ---------------------------------------------------------------------------- assertions


def brute_force(
    data: Dataset, q: npt.NDArray[np.float32], allowed: npt.NDArray[np.bool_] | None = None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """All candidate ids and their float64 inner products with ``q``, best first."""
    ids, vecs = data.ids, data.vectors
    if allowed is not None:
        ids, vecs = ids[allowed], vecs[allowed]
    scores = vecs.astype(np.float64) @ q.astype(np.float64)
    order = np.argsort(-scores, kind="stable")
    return ids[order], scores[order]


def assert_topk(
    hits: Sequence[SearchHit],
    truth_ids: npt.NDArray[np.int64],
    truth_scores: npt.NDArray[np.float64],
    k: int,
    what: str,
) -> None:
    """``hits`` are the exact top-k: right length, right scores rank by rank, no id
    missing that scores clearly better than the k-th, each score its id's true score."""
    want = min(k, truth_ids.size)
    assert len(hits) == want, f"{what}: {len(hits)} hits, expected {want}"
    if want == 0:
        return
    got_ids = [h.id for h in hits]
    got_scores = np.array([h.score for h in hits])
    assert len(set(got_ids)) == want, f"{what}: duplicate ids {got_ids}"
    true_of = dict(zip(truth_ids.tolist(), truth_scores.tolist(), strict=True))
    assert all(i in true_of for i in got_ids), f"{what}: an id outside the candidates"
    np.testing.assert_allclose(got_scores, [true_of[i] for i in got_ids], atol=SCORE_ATOL)
    np.testing.assert_allclose(got_scores, truth_scores[:want], atol=SCORE_ATOL)
    kth = truth_scores[want - 1]
    must = set(truth_ids[truth_scores > kth + TIE].tolist())
    assert must <= set(got_ids), f"{what}: missing {sorted(must - set(got_ids))}"
    assert np.all(np.diff(got_scores) <= TIE), f"{what}: not best first"


def assert_same_topk(a: Sequence[SearchHit], b: Sequence[SearchHit], what: str) -> None:
    """Two backends' hits agree id for id, except where scores tie within :data:`TIE`."""
    assert len(a) == len(b), f"{what}: {len(a)} vs {len(b)} hits"
    np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=SCORE_ATOL)
    for rank, (x, y) in enumerate(zip(a, b, strict=True)):
        if x.id != y.id:
            near = [h.score for h in a if abs(h.score - x.score) <= TIE and h.id != x.id]
            assert near, f"{what}: rank {rank} differs ({x} vs {y}) without a tie"


def search_filtered(
    backend: Backend,
    store: VectorStore,
    data: Dataset,
    queries: npt.NDArray[np.float32],
    k: int,
    flt: SearchFilter,
) -> list[list[SearchHit]]:
    """Search under ``flt``: as payload filter where the backend has one, else as the
    ``allowed_ids`` the catalog would resolve (the ground truth)."""
    if backend.filters:
        return cast(_FilteringStore, store).search(queries, k, filter=flt)
    allowed = np.array([matches(p, flt) for p in data.payloads])
    return store.search(queries, k, allowed_ids=data.ids[allowed])


def contents(store: VectorStore) -> dict[int, bytes]:
    """Every id with the raw bytes of its vector."""
    ids = store.ids()
    vectors = store.get(ids)
    return {int(i): v.tobytes() for i, v in zip(ids, vectors, strict=True)}


# ---------------------------------------------------------------------------- checks


def check_declared(backend: Backend) -> None:
    """The store meets the protocol and declares the filtering it is run with: it keeps
    payloads and filters on them itself exactly when the backend says it ``filters``."""
    store = backend.store()
    assert isinstance(store, VectorStore)
    assert store.uses_payloads is backend.filters


def check_basics(backend: Backend) -> None:
    """Upsert, replace, duplicates, get, ids, count, delete, edge cases of search."""
    data = dataset()
    ids, vecs = data.ids[:300], data.vectors[:300]
    store = backend.store()
    assert store.count() == 0
    assert store.ids().dtype == np.int64 and store.ids().size == 0
    assert store.search(vecs[:2], 5) == [[], []]
    store.upsert(ids, vecs)
    assert store.count() == 300
    assert np.array_equal(store.ids(), np.sort(ids))
    got = store.get(ids[::-1])
    assert got.dtype == np.float32 and got.tobytes() == vecs[::-1].tobytes()

    # Re-upsert replaces; within one call the last duplicate wins.
    new = unit(np.random.default_rng(1).standard_normal((3, DIM)))
    store.upsert(np.array([ids[0], ids[1], ids[0]]), new)
    assert store.count() == 300
    assert store.get(ids[:2]).tobytes() == np.stack([new[2], new[1]]).tobytes()
    hits = store.search(new[2], 1)
    assert hits[0][0].id == ids[0] and abs(hits[0][0].score - 1.0) < SCORE_ATOL

    with pytest.raises(VectorNotFoundError) as missing:
        store.get(np.array([ids[5], 12345]))
    assert missing.value.ids == [12345]
    with pytest.raises(KeyError):
        store.get(np.array([12345]))

    assert store.delete(np.array([ids[3], ids[4], ids[3], 777])) == 2
    assert store.delete(np.array([ids[3]])) == 0
    assert store.count() == 298
    assert ids[3] not in set(store.ids().tolist())

    # One query vector → one result list; k beyond the store; k = 0; empty allowed_ids.
    one = store.search(vecs[10], 3)
    assert len(one) == 1 and one[0][0].id == ids[10]
    assert len(store.search(vecs[10], 1000)[0]) == 298
    assert store.search(vecs[10:12], 0) == [[], []]
    assert store.search(vecs[10:12], 5, allowed_ids=np.array([], dtype=np.int64)) == [[], []]
    few = store.search(vecs[10], 5, allowed_ids=np.array([ids[10], ids[20], 99]))
    assert [h.id for h in few[0]] == [ids[10], ids[20]]  # 99 is not stored
    with pytest.raises(SpaceMismatchError):
        store.upsert(ids[:1], np.zeros((1, DIM + 1), dtype=np.float32))
    with pytest.raises(SpaceMismatchError):
        store.search(np.zeros(DIM + 1, dtype=np.float32), 3)
    with pytest.raises(ValueError):
        store.upsert(ids[:2], vecs[:3])
    described = store.describe()
    for key in ("backend", "space", "dim", "metric", "count"):
        assert key in described
    assert described["dim"] == DIM and described["count"] == 298
    assert described["space"] == SPACE and described["metric"] == "ip"


def check_search(backend: Backend) -> Results:
    """Exact top-k and scores against brute force: plain, allowed_ids, every filter.

    Returns each case's hits, so that backends can be compared with each other.
    """
    data = dataset()
    store = backend.store()
    started = time.perf_counter()
    store.upsert(data.ids, data.vectors, data.payloads)
    upserted = time.perf_counter() - started
    results: Results = {}

    started = time.perf_counter()
    results["plain"] = store.search(data.queries, K)
    searched = time.perf_counter() - started
    for qi, hits in enumerate(results["plain"]):
        truth_ids, truth_scores = brute_force(data, data.queries[qi])
        assert_topk(hits, truth_ids, truth_scores, K, f"{backend.name} plain q{qi}")

    rng = np.random.default_rng(3)
    allowed = np.zeros(N, dtype=bool)
    allowed[rng.choice(N, size=150, replace=False)] = True
    results["allowed_ids"] = store.search(data.queries, K, allowed_ids=data.ids[allowed])
    for qi, hits in enumerate(results["allowed_ids"]):
        truth_ids, truth_scores = brute_force(data, data.queries[qi], allowed)
        assert_topk(hits, truth_ids, truth_scores, K, f"{backend.name} allowed_ids q{qi}")

    started = time.perf_counter()
    for name, flt in filters(data).items():
        mask = np.array([matches(p, flt) for p in data.payloads])
        hits_all = search_filtered(backend, store, data, data.queries[:3], K, flt)
        results[name] = hits_all
        for qi, hits in enumerate(hits_all):
            truth_ids, truth_scores = brute_force(data, data.queries[qi], mask)
            assert_topk(hits, truth_ids, truth_scores, K, f"{backend.name} {name} q{qi}")
    filtered = time.perf_counter() - started

    if backend.filters:
        # A payload filter and an id restriction together: both must hold.
        flt = SearchFilter(label="cat")
        mask = allowed & np.array([matches(p, flt) for p in data.payloads])
        both = cast(_FilteringStore, store).search(
            data.queries[:2], K, allowed_ids=data.ids[allowed], filter=flt
        )
        for qi, hits in enumerate(both):
            truth_ids, truth_scores = brute_force(data, data.queries[qi], mask)
            assert_topk(hits, truth_ids, truth_scores, K, f"{backend.name} filter+ids q{qi}")
    print(
        f"\n{backend.name}: upsert {N}x{DIM} {upserted:.2f} s, {len(data.queries)} queries "
        f"{searched * 1000:.0f} ms, {len(filters(data))}x3 filtered queries {filtered:.2f} s"
    )
    return results


#: Multi-example queries: (positive rows, negative rows, negative weight) of the dataset.
EXAMPLE_CASES = [
    ((0,), (), 0.5),
    ((0, 1, 2), (), 0.5),
    ((3, 4), (5,), 0.5),
    ((6,), (7, 8, 9), 1.0),
    ((10, 11, 12, 13), (14, 15), 2.0),
]


def example_query(
    data: Dataset, pos: Sequence[int], neg: Sequence[int], weight: float
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
    """The combined query vector of rows ``pos`` and ``neg`` and, from brute force, the
    rule's score of every stored vector (mean cosines, computed the long way)."""
    positives = data.vectors[list(pos)]
    negatives = data.vectors[list(neg)] if neg else None
    return combine(positives, negatives, weight), rule_scores(
        data.vectors, positives, negatives, weight
    )


def ranked(
    ids: npt.NDArray[np.int64], scores: npt.NDArray[np.float64], mask: npt.NDArray[np.bool_] | None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """``ids`` and ``scores`` (restricted to ``mask``) best first."""
    if mask is not None:
        ids, scores = ids[mask], scores[mask]
    order = np.argsort(-scores, kind="stable")
    return ids[order], scores[order]


def check_examples(backend: Backend) -> None:
    """Several examples, liked and disliked, searched as ONE inner product with the
    combined vector score exactly as the rule computed by brute force (mean cosine to the
    positives minus w times mean cosine to the negatives): plain, with allowed ids and
    under filters."""
    data = dataset()
    store = backend.store()
    store.upsert(data.ids, data.vectors, data.payloads)
    rng = np.random.default_rng(5)
    allowed = np.zeros(N, dtype=bool)
    allowed[rng.choice(N, size=300, replace=False)] = True
    cases = {n: f for n, f in filters(data).items() if n in ("library", "folder", "combined")}
    for pos, neg, weight in EXAMPLE_CASES:
        what = f"{backend.name} +{pos} -{neg} w={weight}"
        query, scores = example_query(data, pos, neg, weight)
        (hits,) = store.search(query, K)
        assert_topk(hits, *ranked(data.ids, scores, None), K, what)
        (hits,) = store.search(query, K, allowed_ids=data.ids[allowed])
        assert_topk(hits, *ranked(data.ids, scores, allowed), K, f"{what} allowed_ids")
        for name, flt in cases.items():
            mask = np.array([matches(p, flt) for p in data.payloads])
            (hits,) = search_filtered(backend, store, data, query[None], K, flt)
            assert_topk(hits, *ranked(data.ids, scores, mask), K, f"{what} {name}")


def check_cutoff_paging(backend: Backend) -> None:
    """Paging through a query with a score cut-off, page by page as the search service
    does (each page asking the store twice as deep until it has the page), lists exactly
    the hits at or above the cut-off by brute force: none missing, none twice."""
    data = dataset()
    store = backend.store()
    store.upsert(data.ids, data.vectors, data.payloads)
    flt = SearchFilter(library_ids=(1, 3))
    mask = np.array([matches(p, flt) for p in data.payloads])
    for pos, neg, weight in EXAMPLE_CASES[1:4]:
        query, scores = example_query(data, pos, neg, weight)
        skip = set(data.ids[list(pos) + list(neg)].tolist())
        for name, keep in (("plain", None), ("filtered", mask)):
            truth_ids, truth_scores = ranked(data.ids, scores, keep)
            outside = ~np.isin(truth_ids, list(skip))
            truth_ids, truth_scores = truth_ids[outside], truth_scores[outside]
            # Midway between two scores: float32 and float64 differ in the last places.
            cut = float(truth_scores[59] + truth_scores[60]) / 2

            def search(depth: int, keep: Any = keep, query: Any = query) -> list[SearchHit]:
                if keep is None:
                    return store.search(query, depth)[0]
                return search_filtered(backend, store, data, query[None], depth, flt)[0]

            got: list[SearchHit] = []
            offset, pages = 0, 0
            while True:
                page, more = page_above(search, offset=offset, k=7, min_score=cut, skip=skip)
                got.extend(page)
                offset, pages = offset + len(page), pages + 1
                if not more:
                    break
            what = f"{backend.name} cut-off {name} +{pos} -{neg}"
            assert pages == 9, f"{what}: {pages} pages for 60 hits of 7"
            assert len({h.id for h in got}) == len(got), f"{what}: a hit listed twice"
            assert_topk(got, truth_ids, truth_scores, 60, what)


def check_payload_kept(backend: Backend) -> None:
    """Replacing vectors without payloads keeps the payloads filters match on."""
    data = dataset()
    ids, payloads = data.ids[:200], data.payloads[:200]
    store = backend.store()
    store.upsert(ids, data.vectors[:200], payloads)
    replaced = unit(data.vectors[200:400])
    extra = np.array([BASE_ID - 1], dtype=np.int64)
    store.upsert(np.concatenate([ids, extra]), np.concatenate([replaced, replaced[:1]]))
    assert store.get(ids).tobytes() == replaced.tobytes()
    assert store.count() == 201
    sub = Dataset(ids, replaced, payloads, data.queries)
    flt = SearchFilter(library_ids=(1,))
    hits = search_filtered(backend, store, sub, data.queries[:2], K, flt)
    mask = np.array([matches(p, flt) for p in payloads])
    for qi, row in enumerate(hits):
        truth_ids, truth_scores = brute_force(sub, data.queries[qi], mask)
        assert_topk(row, truth_ids, truth_scores, K, f"{backend.name} kept payload q{qi}")


def check_persistence(backend: Backend) -> None:
    """Everything survives close and reopen; reopening with another dim is refused."""
    data = dataset()
    store = backend.store()
    store.upsert(data.ids[:250], data.vectors[:250])
    store.delete(data.ids[:10])
    other = backend.store("cls", DIM)  # a second space beside the first
    other.upsert(data.ids[:5], data.vectors[5:10])
    before = contents(store)
    store.flush()
    store.close()
    other.close()
    with pytest.raises(StoreError):
        store.count()  # closed stores refuse work rather than reconnect silently

    reopened = backend.store()
    assert reopened.count() == 240
    assert contents(reopened) == before
    hits = reopened.search(data.vectors[100], 1)
    assert hits[0][0].id == data.ids[100]
    assert backend.store("cls", DIM).get(data.ids[:5]).tobytes() == data.vectors[5:10].tobytes()
    reopened.close()
    with pytest.raises(SpaceMismatchError):
        backend.store(SPACE, DIM + 8).count()


def check_migration(source: Backend, target: Backend) -> None:
    """source → target → source keeps every vector bit-identical; a migration cut off
    halfway (or a target holding strays and stale vectors) is finished by re-running."""
    data = dataset()
    src = source.store()
    src.upsert(data.ids[:600], data.vectors[:600])
    payload_of = dict(zip(data.ids.tolist(), data.payloads, strict=True))

    def payloads(ids: npt.NDArray[np.int64]) -> list[dict[str, Any]]:
        return [payload_of[int(i)] for i in ids]

    dst = target.store()
    dst.upsert(data.ids[1500:1510], data.vectors[1500:1510])  # strays to remove
    stale = unit(data.vectors[:5] + 1.0)
    dst.upsert(data.ids[:5], stale)  # held, but with the wrong vectors

    class CutOffError(Exception):
        pass

    def cut_after_first(done: int, total: int) -> None:
        if done >= 200:
            raise CutOffError

    with pytest.raises(CutOffError):
        migrate_store(src, dst, batch_size=200, payloads=payloads, progress=cut_after_first)
    first_batch = set(np.sort(data.ids[:600])[:200].tolist())
    assert dst.count() == len(first_batch | set(data.ids[:5].tolist()))  # strays gone
    seen: list[tuple[int, int]] = []
    copied = migrate_store(
        src, dst, batch_size=128, payloads=payloads, progress=lambda d, t: seen.append((d, t))
    )
    assert copied == 400
    assert seen[-1] == (600, 600)
    assert contents(dst) == contents(src)
    assert migrate_store(src, dst) == 0  # nothing left to do

    back = source.store("cls", DIM)
    assert migrate_store(dst, back, batch_size=256) == 600
    assert contents(back) == contents(src)
    assert back.get(data.ids[:600]).tobytes() == data.vectors[:600].tobytes()

    with pytest.raises(SpaceMismatchError):
        migrate_store(src, target.store("mean@-4", DIM + 1))


# ---------------------------------------------------------------------------- tests


def test_declared_capabilities(backend: Backend) -> None:
    check_declared(backend)


def test_basics(backend: Backend) -> None:
    check_basics(backend)


@pytest.fixture(scope="module")
def search_results(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Results]:
    """``check_search`` per backend, run once and shared by the tests that need it."""
    done: dict[str, Results] = {}

    def run(name: str) -> Results:
        if name not in done:
            with ram_folder(tmp_path_factory.mktemp(f"search-{name}")) as folder:
                made = _make_backend(name, folder)
                try:
                    done[name] = check_search(made)
                finally:
                    made.close_all()
        return done[name]

    return run


@pytest.mark.parametrize("name", ["faiss", "qdrant"])
def test_search_matches_brute_force(name: str, search_results: Callable[[str], Results]) -> None:
    assert search_results(name)


def test_backends_agree(search_results: Callable[[str], Results]) -> None:
    faiss_results, qdrant_results = search_results("faiss"), search_results("qdrant")
    assert faiss_results.keys() == qdrant_results.keys()
    for case, rows in faiss_results.items():
        for qi, (a, b) in enumerate(zip(rows, qdrant_results[case], strict=True)):
            assert_same_topk(a, b, f"{case} q{qi}")


def test_payloads_kept_when_vectors_replaced(backend: Backend) -> None:
    check_payload_kept(backend)


def test_examples_match_the_rule(backend: Backend) -> None:
    check_examples(backend)


def test_cutoff_pages_match_brute_force(backend: Backend) -> None:
    check_cutoff_paging(backend)


def test_persistence(backend: Backend) -> None:
    check_persistence(backend)


def test_migrate_faiss_qdrant_faiss(fast_path: Path) -> None:
    faiss, qdrant = faiss_backend(fast_path / "faiss"), qdrant_local_backend(fast_path / "qdrant")
    try:
        check_migration(faiss, qdrant)
    finally:
        faiss.close_all()
        qdrant.close_all()


def test_migrate_qdrant_faiss_qdrant(fast_path: Path) -> None:
    faiss, qdrant = faiss_backend(fast_path / "faiss"), qdrant_local_backend(fast_path / "qdrant")
    try:
        check_migration(qdrant, faiss)
    finally:
        faiss.close_all()
        qdrant.close_all()


# ---------------------------------------------------------------------------- Qdrant only


def test_filter_translation() -> None:
    flt = search_filter_to_qdrant(
        SearchFilter(
            library_ids=(3, 1),
            path_prefix="/photos/a//",
            taken_after=datetime(2020, 1, 1),
            label="cat",
        ),
        np.array([5, 7], dtype=np.int64),
    )
    assert flt is not None and flt.must is not None
    conditions = list(flt.must) if isinstance(flt.must, list) else [flt.must]
    assert isinstance(conditions[0], models.HasIdCondition)
    assert conditions[0].has_id == [5, 7]
    keys = {c.key: c for c in conditions if isinstance(c, models.FieldCondition)}
    assert keys["library_id"].match == models.MatchAny(any=[3, 1])
    assert keys["dirs"].match == models.MatchValue(value="/photos/a")
    assert keys["taken_at"].range == models.Range(gte=1577836800.0)
    assert keys["labels"].match == models.MatchValue(value="cat")
    root = search_filter_to_qdrant(SearchFilter(path_prefix="/"))
    assert root is not None and root.must is not None
    assert cast(list[models.FieldCondition], root.must)[0].match == models.MatchValue(value="/")
    assert search_filter_to_qdrant(SearchFilter()) is None
    assert search_filter_to_qdrant(None) is None


def test_qdrant_construction_is_lazy_and_checked(tmp_path: Path) -> None:
    # Nothing listens on port 9: constructing must not notice.
    store = QdrantStore("cls", DIM, url="http://127.0.0.1:9", timeout=1)
    assert store.collection == "vitdex_cls"
    assert "127.0.0.1:9" in repr(store)
    store.close()
    with pytest.raises(ValueError, match="exactly one"):
        QdrantStore("cls", DIM)
    with pytest.raises(ValueError, match="exactly one"):
        QdrantStore("cls", DIM, url="http://x", path=tmp_path)
    with pytest.raises(ValueError, match="quantization"):
        QdrantStore("cls", DIM, path=tmp_path, quantization="pq")
    local = QdrantStore("cls", DIM, path=tmp_path / "q", collection_prefix="t_")
    assert not (tmp_path / "q").exists()
    with pytest.raises(ValueError, match="negative"):
        local.upsert(np.array([-1]), np.zeros((1, DIM), dtype=np.float32))
    assert local.collection == "t_cls" and local.count() == 0
    local.close()


def test_qdrant_retries_transient_errors_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "sleep", lambda _s: None)
    store = QdrantStore("cls", DIM, url="http://127.0.0.1:9")
    calls: list[int] = []

    def flaky(failures: Sequence[Exception]) -> Callable[[], str]:
        def call() -> str:
            calls.append(1)
            if len(calls) <= len(failures):
                raise failures[len(calls) - 1]
            return "ok"

        return call

    def response(status: int) -> UnexpectedResponse:
        return UnexpectedResponse(status, "x", b"", httpx.Headers())

    transient = [
        ResponseHandlingException(httpx.ConnectError("refused")),
        ResponseHandlingException(httpx.ReadTimeout("slow")),
        response(503),
    ]
    assert store._connection.call("test", flaky(transient)) == "ok"
    assert len(calls) == 4
    calls.clear()
    with pytest.raises(StoreError, match="400"):
        store._connection.call("test", flaky([response(400)]))
    assert len(calls) == 1  # a 4xx is the request's fault: not retried
    calls.clear()
    with pytest.raises(StoreError):
        store._connection.call("test", flaky([response(502)] * 10))
    assert len(calls) == 6  # the first try and five retries
    store.close()


def test_qdrant_shares_one_local_client_per_folder(tmp_path: Path) -> None:
    a = QdrantStore("cls", DIM, path=tmp_path)
    b = QdrantStore("cls@8", DIM, path=tmp_path)
    a.upsert(np.array([1]), unit(np.ones((1, DIM))))
    b.upsert(np.array([2, 3]), unit(np.ones((2, DIM))))
    assert (a.count(), b.count()) == (1, 2)
    a.close()
    assert b.count() == 2  # b's client outlives a's close
    assert b.drop() is True
    assert b.count() == 0  # dropped, then recreated empty on next use
    b.close()


def test_qdrant_search_params_follow_collection_size() -> None:
    store = QdrantStore("cls", DIM, url="http://127.0.0.1:9", search_ef=96)
    store._quantized = True  # as if the collection had been opened with int8 codes
    store._count_cache = (time.monotonic(), 500)
    small = store._search_params()
    assert small is not None and small.exact is True
    assert small.quantization is not None and small.quantization.ignore is True
    store._count_cache = (time.monotonic(), 50_000)
    large = store._search_params()
    assert large is not None and not large.exact and large.hnsw_ef == 96
    assert large.quantization is not None and large.quantization.rescore is True
    forced = QdrantStore("cls", DIM, url="http://127.0.0.1:9", exact=True)
    forced._count_cache = (time.monotonic(), 50_000)
    params = forced._search_params()
    assert params is not None and params.exact is True
    store.close()
    forced.close()


def test_qdrant_describe(tmp_path: Path) -> None:
    store = QdrantStore("cls@8", DIM, path=tmp_path, hnsw_m=32)
    store.upsert(np.array([4, 2]), unit(np.ones((2, DIM))))
    described = store.describe()
    assert described["backend"] == "qdrant" and described["mode"] == "local"
    assert described["collection"] == "vitdex_cls_at_8"
    assert described["count"] == 2 and described["distance"] == "Dot"
    assert described["exact"] is True and described["quantization"] is None
    for key in ("hnsw_m", "hnsw_ef_construct", "search_ef", "payload_indexes"):
        assert key in described
    store.close()


def test_qdrant_unreachable_server_is_a_store_error(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    # The client checks the server version in a thread of its own, warning after the test.
    monkeypatch.setattr(QdrantRemote, "_check_compatibility", staticmethod(lambda *a: None))
    # Nothing listens on port 9: every attempt is refused, retried, then reported.
    store = QdrantStore("cls", DIM, url="http://127.0.0.1:9", timeout=2, hnsw_m=8)
    with pytest.raises(StoreError, match="vitdex_cls"):
        store.count()
    assert len(slept) == 5 and max(slept) <= 5.0
    with pytest.raises(StoreError):
        store.count()  # a failed first connection is retried on the next call, not cached
    assert store.layout.hnsw_config() == models.HnswConfigDiff(m=8)
    assert QdrantStore("c", DIM, url="http://x", quantization="int8").layout.quantization_config()
    store.close()


def test_qdrant_cluster_settings_reach_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vitdex.config import load_settings
    from vitdex.vectors.factory import open_store

    for name, value in {
        "VITDEX_HOME": str(tmp_path),
        "VITDEX_VECTOR_BACKEND": "qdrant",
        "VITDEX_QDRANT_URL": "http://127.0.0.1:9",  # nothing is contacted here
        "VITDEX_QDRANT_SHARDS": "6",
        "VITDEX_QDRANT_REPLICAS": "2",
        "VITDEX_QDRANT_WRITE_CONSISTENCY": "2",
        "VITDEX_QDRANT_ON_DISK": "true",
    }.items():
        monkeypatch.setenv(name, value)
    store = open_store(load_settings(), "cls", DIM)
    assert isinstance(store, QdrantStore)
    layout = store.layout
    assert (layout.shards, layout.replicas, layout.write_consistency, layout.on_disk) == (
        6,
        2,
        2,
        True,
    )
    store.close()
    with pytest.raises(ValueError, match="write_consistency 3 exceeds the 2 replica"):
        QdrantStore("cls", DIM, url="http://x", replicas=2, write_consistency=3)
    with pytest.raises(ValueError, match="shards must be at least 1"):
        QdrantStore("cls", DIM, url="http://x", shards=0)
