"""The server vector store: one Qdrant collection per space, filtered by image payloads.

Point ids are the SQL image ids (non-negative int64), the vector is the unnamed dense
vector, and the payload is :func:`vitdex.vectors.store.image_payload`.
:class:`QdrantStore` implements the :class:`~vitdex.vectors.store.VectorStore` contract
over the parts that each own one concern:

- :mod:`~vitdex.vectors.qdrant.connection`: the client (a server's, or local mode's
  shared one) and the retried requests;
- :mod:`~vitdex.vectors.qdrant.collection`: creating and checking the collection;
- :mod:`~vitdex.vectors.qdrant.payloads`: payloads, and filters over them.

``url`` talks to a server or cluster; ``path`` uses qdrant-client's local mode (the same
API, in-process, exact search; meant for tests and small collections).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from qdrant_client import QdrantClient, models

from vitdex.errors import StoreError
from vitdex.vectors.qdrant.collection import CollectionLayout, hnsw_settings, open_collection
from vitdex.vectors.qdrant.connection import Connection
from vitdex.vectors.qdrant.payloads import (
    existing_ids,
    plain_payloads,
    replace_vectors,
    search_filter_to_qdrant,
    upsert_points,
)
from vitdex.vectors.store import (
    ClosingStore,
    SearchFilter,
    SearchHit,
    VectorNotFoundError,
    check_batch,
    check_ids,
    check_vectors,
    sanitize_space_name,
)

__all__ = ["EXACT_BELOW", "QdrantStore"]

log = logging.getLogger(__name__)

#: Collections with fewer points are searched exactly (brute force) unless told otherwise:
#: below this size a full scan costs little and gives the true top-k, like FAISS.
EXACT_BELOW = 20_000

_SCROLL_PAGE = 10_000
_QUERY_BATCH = 64
# How long a point count read from the server decides exact-or-HNSW before it is re-read.
_COUNT_TTL_S = 10.0


class QdrantStore(ClosingStore):
    """Vectors of one space in the Qdrant collection ``collection_prefix + space``.

    Construction connects to nothing; the first call connects, creates the collection
    (with payload indexes for the filter fields) or checks that the existing one holds
    vectors of this dim and metric. Writes are batched (``batch_size`` points a request),
    retried with exponential backoff on transient failures, and sent with ``wait=True``,
    so they are applied and in Qdrant's WAL when the call returns.

    Searches are exact (a full scan) while the collection holds fewer than
    :data:`EXACT_BELOW` points, so small collections give the true top-k like FAISS;
    larger ones use HNSW with ``hnsw_ef=search_ef``. ``exact=True`` always scans,
    ``exact=False`` always uses HNSW. Local mode (``path``) always scans.
    """

    #: The indexer sends each image's filterable metadata (see ``image_payload``).
    uses_payloads = True

    def __init__(
        self,
        space: str,
        dim: int,
        *,
        metric: str = "ip",
        url: str | None = None,
        api_key: str | None = None,
        path: Path | None = None,
        collection_prefix: str = "vitdex_",
        hnsw_m: int | None = None,
        hnsw_ef_construct: int | None = None,
        search_ef: int | None = None,
        quantization: str | None = None,
        shards: int | None = None,
        replicas: int | None = None,
        write_consistency: int | None = None,
        on_disk: bool = False,
        batch_size: int = 256,
        timeout: float = 30.0,
        exact: bool | None = None,
    ) -> None:
        if (url is None) == (path is None):
            raise ValueError("give exactly one of url (a Qdrant server) or path (local mode)")
        #: What the collection is created with (an existing one keeps its own layout).
        self.layout = CollectionLayout(
            int(dim),
            metric,
            hnsw_m=hnsw_m,
            hnsw_ef_construct=hnsw_ef_construct,
            quantization=quantization,
            shards=shards,
            replicas=replicas,
            write_consistency=write_consistency,
            on_disk=bool(on_disk),
        )
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.space = space
        self.dim = int(dim)
        self.metric = metric
        self.url = url
        self.path = None if path is None else Path(path)
        self.collection = collection_prefix + sanitize_space_name(space)
        self.search_ef = search_ef
        self.batch_size = int(batch_size)
        self.timeout = float(timeout)
        self.exact = exact
        self._connection = Connection(
            self.collection, url=url, api_key=api_key, path=self.path, timeout=self.timeout
        )
        self._lock = threading.RLock()
        self._closed = False
        self._quantized = False
        self._count_cache: tuple[float, int] | None = None

    # ------------------------------------------------------------------ public API

    def upsert(
        self,
        ids: npt.ArrayLike,
        vectors: npt.ArrayLike,
        payloads: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """Store ``vectors`` [n, dim] under ``ids`` [n], replacing existing ones.

        The last of duplicate ids within the call wins. With ``payloads`` each point's
        payload is replaced by the given one; with ``None`` a replaced vector keeps the
        payload it had (new points get none). Applied when the call returns.
        """
        id_arr, vecs, keep = check_batch(
            self._id_array(ids), vectors, payloads, self.dim, self.space
        )
        if id_arr.size == 0:
            return
        plain = plain_payloads(payloads, keep)
        with self._lock:
            self._ready()
            self._count_cache = None
            for start in range(0, id_arr.size, self.batch_size):
                stop = start + self.batch_size
                chunk_ids = id_arr[start:stop]
                chunk_vecs = vecs[start:stop]
                if plain is not None:
                    upsert_points(self._connection, chunk_ids, chunk_vecs, plain[start:stop])
                else:
                    replace_vectors(self._connection, chunk_ids, chunk_vecs)

    def delete(self, ids: npt.ArrayLike) -> int:
        """Remove the vectors (and payloads) of ``ids``; returns how many were stored."""
        id_arr = np.unique(self._id_array(ids))
        if id_arr.size == 0:
            return 0
        removed = 0
        with self._lock:
            client = self._ready()
            self._count_cache = None
            for start in range(0, id_arr.size, self.batch_size):
                present = existing_ids(self._connection, id_arr[start : start + self.batch_size])
                if not present:
                    continue
                self._connection.call(
                    "delete",
                    client.delete,
                    collection_name=self.collection,
                    points_selector=models.PointIdsList(points=list(present)),
                    wait=True,
                )
                removed += len(present)
        return removed

    def search(
        self,
        queries: npt.ArrayLike,
        k: int,
        *,
        allowed_ids: npt.ArrayLike | None = None,
        filter: SearchFilter | None = None,
    ) -> list[list[SearchHit]]:
        """The ``k`` best stored vectors for each query, best first.

        ``queries`` is [q, dim] or a single [dim] vector (one result list either way).
        ``allowed_ids`` and ``filter`` (payload conditions, see
        :func:`search_filter_to_qdrant`) restrict the candidates inside Qdrant, so a
        narrow restriction still yields up to ``k`` hits.
        """
        q = check_vectors(queries, self.dim, self.space, "queries")
        if k < 0:
            raise ValueError(f"k must not be negative, got {k}")
        allowed = None if allowed_ids is None else np.unique(self._id_array(allowed_ids))
        if k == 0 or q.shape[0] == 0 or (allowed is not None and allowed.size == 0):
            return [[] for _ in range(q.shape[0])]
        query_filter = search_filter_to_qdrant(filter, allowed)
        with self._lock:
            client = self._ready()
            params = self._search_params()
        # Outside the lock: concurrent searches of one store run in parallel on a server.
        requests = [
            models.QueryRequest(
                query=row,
                filter=query_filter,
                params=params,
                limit=int(k),
                with_payload=False,
                with_vector=False,
            )
            for row in q.tolist()
        ]
        responses: list[models.QueryResponse] = []
        for start in range(0, len(requests), _QUERY_BATCH):
            responses.extend(
                self._connection.call(
                    "search",
                    client.query_batch_points,
                    collection_name=self.collection,
                    requests=requests[start : start + _QUERY_BATCH],
                )
            )
        return [[self._hit(p) for p in response.points] for response in responses]

    def get(self, ids: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """The stored vectors of ``ids`` [n, dim], bit-identical, in the order asked.

        Raises :class:`VectorNotFoundError` (a ``KeyError``) naming the missing ids.
        """
        id_arr = self._id_array(ids)
        if id_arr.size == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        wanted = np.unique(id_arr)
        found: dict[int, npt.NDArray[np.float32]] = {}
        with self._lock:
            client = self._ready()
            for start in range(0, wanted.size, self.batch_size):
                records = self._connection.call(
                    "retrieve",
                    client.retrieve,
                    collection_name=self.collection,
                    ids=[int(i) for i in wanted[start : start + self.batch_size].tolist()],
                    with_payload=False,
                    with_vectors=True,
                )
                for record in records:
                    found[int(record.id)] = self._record_vector(record)
        missing = [i for i in id_arr.tolist() if i not in found]
        if missing:
            raise VectorNotFoundError(self.space, missing)
        return np.stack([found[i] for i in id_arr.tolist()]).astype(np.float32, copy=False)

    def ids(self) -> npt.NDArray[np.int64]:
        """Every stored id, sorted."""
        out: list[int] = []
        with self._lock:
            client = self._ready()
            offset: Any = None
            while True:
                records, offset = self._connection.call(
                    "scroll",
                    client.scroll,
                    collection_name=self.collection,
                    limit=_SCROLL_PAGE,
                    offset=offset,
                    with_payload=False,
                    with_vectors=False,
                )
                out.extend(int(r.id) for r in records)
                if offset is None:
                    break
        return np.sort(np.asarray(out, dtype=np.int64))

    def count(self) -> int:
        """How many vectors the store holds (an exact count)."""
        with self._lock:
            client = self._ready()
            result = self._connection.call(
                "count", client.count, collection_name=self.collection, exact=True
            )
            self._count_cache = (time.monotonic(), int(result.count))
            return int(result.count)

    def flush(self) -> None:
        """Nothing to fold: every write was applied and logged by Qdrant before returning.

        Snapshots of a server are an operator's job (Qdrant's snapshot API); local mode
        commits each point to its SQLite file as it is written.
        """
        with self._lock:
            self._ready()

    def close(self) -> None:
        """Release the connection (or the shared local-mode client). Writes nothing.

        Any later call raises :class:`StoreError`; open a new store to continue.
        """
        with self._lock:
            self._closed = True
            self._release()

    def drop(self) -> bool:
        """Delete the collection and every vector in it; returns whether it existed.

        The store stays usable: the next call creates an empty collection again.
        """
        with self._lock:
            client = self._connect()
            existed = bool(
                self._connection.call(
                    "drop", client.delete_collection, collection_name=self.collection
                )
            )
            self._release()
            return existed

    def describe(self) -> dict[str, Any]:
        """Backend, space, dim, metric, collection, count and HNSW/quantization settings."""
        with self._lock:
            client = self._ready()
            info = self._connection.call(
                "describe", client.get_collection, collection_name=self.collection
            )
            count = self._connection.call(
                "count", client.count, collection_name=self.collection, exact=True
            ).count
            params = info.config.params.vectors
            vector_params = params if isinstance(params, models.VectorParams) else None
            local = self.path is not None
            # Local mode builds no index and reports made-up defaults.
            m, ef_construct = (None, None) if local else hnsw_settings(info)
            return {
                "backend": "qdrant",
                "mode": "local" if local else "server",
                "location": str(self.path) if local else self.url,
                "space": self.space,
                "dim": self.dim,
                "metric": self.metric,
                "distance": str(self.layout.distance.value),
                "collection": self.collection,
                "count": int(count),
                "indexed_vectors_count": info.indexed_vectors_count,
                "status": str(info.status.value),
                "index_type": "full scan" if local else "HNSW",
                "exact": local or self._use_exact(int(count)),
                "exact_below": EXACT_BELOW,
                "hnsw_m": m,
                "hnsw_ef_construct": ef_construct,
                "search_ef": self.search_ef,
                "quantization": "int8" if self._quantized else None,
                # What the collection was created with (local mode has no cluster).
                "shards": None if local else info.config.params.shard_number,
                "replicas": None if local else info.config.params.replication_factor,
                "write_consistency": (
                    None if local else info.config.params.write_consistency_factor
                ),
                "on_disk": None if local or vector_params is None else vector_params.on_disk,
                "payload_indexes": sorted(info.payload_schema),
                "batch_size": self.batch_size,
            }

    def __repr__(self) -> str:
        where = f"path={str(self.path)!r}" if self.path is not None else f"url={self.url!r}"
        return f"QdrantStore({self.space!r}, dim={self.dim}, {where})"

    # ------------------------------------------------------------------ connection

    def _connect(self) -> QdrantClient:
        if self._closed:
            raise StoreError(f"the vector store of space {self.space!r} is closed")
        return self._connection.client()

    def _release(self) -> None:
        self._count_cache = None
        self._connection.release()

    def _ready(self) -> QdrantClient:
        """The client, connected and with the collection checked or created."""
        if self._connection.connected and not self._closed:
            return self._connection.client()
        client = self._connect()
        try:
            self._quantized = open_collection(self._connection, self.layout)
        except BaseException:
            self._release()
            raise
        return client

    # ------------------------------------------------------------------ requests

    def _search_params(self) -> models.SearchParams | None:
        if self.path is not None:
            return None  # local mode always scans, and warns about any search params
        if self._use_exact(self._approx_count()):
            # Scan the original vectors, not their int8 codes, for the true top-k.
            quant = models.QuantizationSearchParams(ignore=True) if self._quantized else None
            return models.SearchParams(exact=True, quantization=quant)
        quant = (
            models.QuantizationSearchParams(rescore=True, oversampling=2.0)
            if self._quantized
            else None
        )
        return models.SearchParams(hnsw_ef=self.search_ef, quantization=quant)

    def _use_exact(self, count: int) -> bool:
        if self.exact is not None:
            return self.exact
        return count < EXACT_BELOW

    def _approx_count(self) -> int:
        now = time.monotonic()
        if self._count_cache is not None and now - self._count_cache[0] < _COUNT_TTL_S:
            return self._count_cache[1]
        client = self._ready()
        result = self._connection.call(
            "count", client.count, collection_name=self.collection, exact=False
        )
        self._count_cache = (now, int(result.count))
        return int(result.count)

    def _hit(self, point: models.ScoredPoint) -> SearchHit:
        score = float(point.score)
        if self.metric == "l2":
            score = -(score * score)  # Qdrant answers the distance; FAISS -squared distance
        return SearchHit(int(point.id), score)

    def _record_vector(self, record: models.Record) -> npt.NDArray[np.float32]:
        vector: Any = record.vector
        if isinstance(vector, dict):
            vector = vector.get("")
        if not isinstance(vector, list) or len(vector) != self.dim:
            raise StoreError(
                f"Qdrant collection {self.collection!r} returned no {self.dim}-dim vector "
                f"for point {record.id}"
            )
        return np.asarray(vector, dtype=np.float32)

    # ------------------------------------------------------------------ validation

    @staticmethod
    def _id_array(ids: npt.ArrayLike) -> npt.NDArray[np.int64]:
        out = check_ids(ids)
        if out.size and (out < 0).any():
            raise ValueError("ids must not be negative: Qdrant point ids are unsigned")
        return out
