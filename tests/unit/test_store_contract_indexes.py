"""The vector-store contract, run against the FAISS store with each kind of index.

Each store builds its index right after its first upsert, then writes a seventh of
those vectors again (the same values, so the expected answers do not change): the
index then answers for the base, the rewritten ids come from the in-memory overlay
(their base copies superseded) and every search merges the two, as it does in use after
a rebuild. The specs are tuned to be exact on the contract's 2,000 clustered vectors
(every IVF list probed, HNSW's beam wider than the store is deep, compressed codes
re-scored over several times ``k`` candidates), since the contract checks exact top-k.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from tests.unit.test_store_contract import (
    Backend,
    check_basics,
    check_cutoff_paging,
    check_declared,
    check_examples,
    check_payload_kept,
    check_persistence,
    check_search,
    ram_folder,
)
from vitdex.vectors.faiss.store import FaissStore
from vitdex.vectors.store import VectorStore

SPECS = [
    "flat",
    "hnsw:M=16,efConstruction=200,efSearch=400",
    "ivf:nlist=4,nprobe=4",
    "ivf:nlist=4,nprobe=4,code=sq8,rerank=4",
    "ivf:nlist=4,nprobe=4,code=pq,pq_m=16,rerank=40",
]


class IndexedStore(FaissStore):
    """A FAISS store that builds ``spec`` over its first upsert, then rewrites part of it."""

    def __init__(self, *args: Any, spec: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spec = spec
        self.built = False

    def upsert(
        self,
        ids: npt.ArrayLike,
        vectors: npt.ArrayLike,
        payloads: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        super().upsert(ids, vectors, payloads)
        if self.built:
            return
        self.built = True
        self.reindex(self.spec)
        id_arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        vecs = np.asarray(vectors, dtype=np.float32).reshape(id_arr.size, -1)
        # The last duplicate of an id won above: rewrite exactly those values.
        _, last = np.unique(id_arr[::-1], return_index=True)
        keep = np.sort(id_arr.size - 1 - last)[::7]
        super().upsert(id_arr[keep], vecs[keep])


def indexed_backend(folder: Path, spec: str) -> Backend:
    def open_indexed(space: str, dim: int) -> VectorStore:
        path = folder / space.replace("@", "_")
        return IndexedStore(path, space, dim, durable=False, spec=spec)

    return Backend(f"faiss {spec}", open_indexed, filters=False)


@pytest.fixture(params=SPECS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with ram_folder(tmp_path) as folder:
        made = indexed_backend(folder, str(request.param))
        try:
            yield made
        finally:
            made.close_all()


def test_declared_capabilities(backend: Backend) -> None:
    check_declared(backend)


def test_basics(backend: Backend) -> None:
    check_basics(backend)


def test_search_matches_brute_force(backend: Backend) -> None:
    check_search(backend)
    store = backend.opened[-1]
    assert isinstance(store, IndexedStore)
    info = store.describe()
    # The searches really went through the index, beside a non-empty overlay.
    assert info["exact"] == (store.spec == "flat") and info["trained"]
    assert info["overlay_count"] > 0 and info["superseded_count"] == info["overlay_count"]


def test_examples_match_the_rule(backend: Backend) -> None:
    """Combined query vectors are no unit vectors and lie between clusters, unlike
    the photos the index was trained on: the index still answers them exactly."""
    check_examples(backend)


def test_cutoff_pages_match_brute_force(backend: Backend) -> None:
    check_cutoff_paging(backend)


def test_payloads_kept_when_vectors_replaced(backend: Backend) -> None:
    check_payload_kept(backend)


def test_persistence(backend: Backend) -> None:
    check_persistence(backend)
