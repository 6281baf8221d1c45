"""The server vector store: one Qdrant collection per space, filtered by image payloads.

Point ids are the SQL image ids (non-negative int64), the vector is the unnamed dense
vector, and the payload is :func:`vitdex.vectors.store.image_payload`. Vectors are
L2-normalised, so the ``"ip"`` metric uses ``Distance.DOT``: scores equal FAISS inner
products, and Qdrant does not rewrite the stored vectors (``COSINE`` would normalise them
again, so a round trip would no longer be bit-identical).

``url`` talks to a server or cluster; ``path`` uses qdrant-client's local mode (the same
API, in-process, exact search; meant for tests and small collections).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import numpy.typing as npt
from qdrant_client import QdrantClient, models
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from vitdex.errors import SpaceMismatchError, StoreError
from vitdex.vectors.store import (
    SearchFilter,
    SearchHit,
    VectorNotFoundError,
    check_vectors,
    sanitize_space_name,
)

__all__ = ["EXACT_BELOW", "QdrantStore", "search_filter_to_qdrant"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Collections with fewer points are searched exactly (brute force) unless told otherwise:
#: below this size a full scan costs little and gives the true top-k, like FAISS.
EXACT_BELOW = 20_000

_DISTANCES = {"ip": models.Distance.DOT, "l2": models.Distance.EUCLID}

#: The payload fields filters use, and the index type each gets on a server.
PAYLOAD_INDEXES: dict[str, models.PayloadSchemaType] = {
    "library_id": models.PayloadSchemaType.INTEGER,
    "dirs": models.PayloadSchemaType.KEYWORD,
    "taken_at": models.PayloadSchemaType.FLOAT,
    "camera_make": models.PayloadSchemaType.KEYWORD,
    "camera_model": models.PayloadSchemaType.KEYWORD,
    "labels": models.PayloadSchemaType.KEYWORD,
}

_RETRIES = 5
_BACKOFF_S = 0.2
_BACKOFF_MAX_S = 5.0
_SCROLL_PAGE = 10_000
_QUERY_BATCH = 64
# How long a point count read from the server decides exact-or-HNSW before it is re-read.
_COUNT_TTL_S = 10.0


def search_filter_to_qdrant(
    flt: SearchFilter | None, allowed_ids: npt.NDArray[np.int64] | None = None
) -> models.Filter | None:
    """The Qdrant filter for ``flt`` (and an id restriction), over :func:`image_payload`.

    ``taken_after`` is inclusive and ``taken_before`` exclusive (a half-open range), both
    read as wall-clock times in UTC, exactly as the payload stores ``taken_at``.
    """
    must: list[models.Condition] = []
    if allowed_ids is not None:
        must.append(models.HasIdCondition(has_id=[int(i) for i in allowed_ids.tolist()]))
    if flt is not None:
        if flt.library_ids:
            must.append(
                models.FieldCondition(
                    key="library_id",
                    match=models.MatchAny(any=[int(i) for i in flt.library_ids]),
                )
            )
        if flt.path_prefix is not None:
            folder = _folder_key(flt.path_prefix)
            must.append(models.FieldCondition(key="dirs", match=models.MatchValue(value=folder)))
        if flt.taken_after is not None or flt.taken_before is not None:
            must.append(
                models.FieldCondition(
                    key="taken_at",
                    range=models.Range(
                        gte=_epoch(flt.taken_after) if flt.taken_after else None,
                        lt=_epoch(flt.taken_before) if flt.taken_before else None,
                    ),
                )
            )
        for key, value in (
            ("camera_make", flt.camera_make),
            ("camera_model", flt.camera_model),
            ("labels", flt.label),
        ):
            if value is not None:
                must.append(models.FieldCondition(key=key, match=models.MatchValue(value=value)))
    return models.Filter(must=must) if must else None


def _folder_key(prefix: str) -> str:
    """A folder as ``image_payload`` lists it in ``dirs``: no trailing slash, root is "/"."""
    stripped = prefix.rstrip("/")
    if not stripped:
        return "/" if prefix.startswith("/") else ""
    return stripped


def _epoch(when: datetime) -> float:
    # Same convention as image_payload: the wall-clock time read as UTC (EXIF has no zone).
    return when.replace(tzinfo=UTC).timestamp()


@dataclass
class _Shared:
    """One local-mode client per folder: qdrant-client locks the folder per client."""

    client: QdrantClient
    lock: threading.RLock = field(default_factory=threading.RLock)
    refs: int = 0


_LOCAL: dict[str, _Shared] = {}
# Re-entrant: a store dropped unclosed gives its client back from __del__, which the
# garbage collector may run while this thread holds the lock (inside _acquire_local).
_LOCAL_LOCK = threading.RLock()


def _acquire_local(path: Path) -> _Shared:
    key = os.path.realpath(path)
    with _LOCAL_LOCK:
        shared = _LOCAL.get(key)
        if shared is None:
            Path(key).mkdir(parents=True, exist_ok=True)
            try:
                client = QdrantClient(path=key)
            except RuntimeError as exc:  # the folder is locked by another process
                raise StoreError(f"cannot open the Qdrant folder {key}: {exc}") from exc
            shared = _LOCAL[key] = _Shared(client)
        shared.refs += 1
        return shared


def _release_local(path: Path, shared: _Shared) -> None:
    key = os.path.realpath(path)
    with _LOCAL_LOCK:
        shared.refs -= 1
        if shared.refs <= 0:
            if _LOCAL.get(key) is shared:
                del _LOCAL[key]
            with shared.lock:
                shared.client.close()


def _transient(exc: BaseException) -> bool:
    """Whether retrying the same request may succeed (network, timeouts, 5xx, 429)."""
    if isinstance(exc, ResourceExhaustedResponse):
        return True
    if isinstance(exc, UnexpectedResponse):
        code = exc.status_code
        return code is None or code >= 500 or code == 429
    if isinstance(exc, ResponseHandlingException):
        # Wraps what httpx raised while sending; a response it could not parse is no
        # network hiccup.
        return isinstance(exc.source, httpx.TransportError | OSError | TimeoutError)
    return isinstance(exc, httpx.TransportError | ConnectionError | TimeoutError)


def _missing_point(exc: BaseException) -> bool:
    """``update_vectors`` named a point that is gone (local mode: KeyError; server: 404)."""
    if isinstance(exc, KeyError):
        return True
    return isinstance(exc, UnexpectedResponse) and exc.status_code == 404


class QdrantStore:
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
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if metric not in _DISTANCES:
            raise ValueError(f"metric must be one of {sorted(_DISTANCES)}, got {metric!r}")
        if (url is None) == (path is None):
            raise ValueError("give exactly one of url (a Qdrant server) or path (local mode)")
        if quantization not in (None, "int8"):
            raise ValueError(f"quantization must be None or 'int8', got {quantization!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        for name, value in (
            ("shards", shards),
            ("replicas", replicas),
            ("write_consistency", write_consistency),
        ):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if write_consistency is not None and write_consistency > (replicas or 1):
            raise ValueError(
                f"write_consistency {write_consistency} exceeds the {replicas or 1} "
                "replica(s) a write can reach"
            )
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.space = space
        self.dim = int(dim)
        self.metric = metric
        self.url = url
        self.path = None if path is None else Path(path)
        self.collection = collection_prefix + sanitize_space_name(space)
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construct = hnsw_ef_construct
        self.search_ef = search_ef
        self.quantization = quantization
        self.shards = shards
        self.replicas = replicas
        self.write_consistency = write_consistency
        self.on_disk = bool(on_disk)
        self.batch_size = int(batch_size)
        self.timeout = float(timeout)
        self.exact = exact
        self._api_key = api_key
        self._lock = threading.RLock()
        self._client: QdrantClient | None = None
        self._shared: _Shared | None = None
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
        id_arr = self._id_array(ids)
        vecs = self._vector_array(vectors, "vectors")
        if vecs.shape[0] != id_arr.shape[0]:
            raise ValueError(f"{id_arr.shape[0]} ids but {vecs.shape[0]} vectors")
        if payloads is not None and len(payloads) != id_arr.shape[0]:
            raise ValueError(f"{id_arr.shape[0]} ids but {len(payloads)} payloads")
        if id_arr.size == 0:
            return
        keep: npt.NDArray[np.intp] | None = None
        if id_arr.size > 1:
            # Last duplicate wins: unique over the reversed ids finds each id's last row.
            _, last = np.unique(id_arr[::-1], return_index=True)
            if last.size != id_arr.size:
                keep = np.sort(id_arr.size - 1 - last)
                id_arr, vecs = id_arr[keep], vecs[keep]
        plain: list[dict[str, Any]] | None = None
        if payloads is not None:
            rows = payloads if keep is None else [payloads[i] for i in keep.tolist()]
            plain = [dict(p) for p in rows]
        with self._lock:
            self._ready()
            self._count_cache = None
            for start in range(0, id_arr.size, self.batch_size):
                stop = start + self.batch_size
                chunk_ids = id_arr[start:stop]
                chunk_vecs = vecs[start:stop]
                if plain is not None:
                    self._upsert_points(chunk_ids, chunk_vecs, plain[start:stop])
                else:
                    self._replace_vectors(chunk_ids, chunk_vecs)

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
                present = self._existing(id_arr[start : start + self.batch_size])
                if not present:
                    continue
                self._call(
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
        q = self._vector_array(queries, "queries")
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
                self._call(
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
                records = self._call(
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
                records, offset = self._call(
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
            result = self._call("count", client.count, collection_name=self.collection, exact=True)
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
                self._call("drop", client.delete_collection, collection_name=self.collection)
            )
            self._release()
            return existed

    def describe(self) -> dict[str, Any]:
        """Backend, space, dim, metric, collection, count and HNSW/quantization settings."""
        with self._lock:
            client = self._ready()
            info = self._call("describe", client.get_collection, collection_name=self.collection)
            count = self._call(
                "count", client.count, collection_name=self.collection, exact=True
            ).count
            params = info.config.params.vectors
            vector_params = params if isinstance(params, models.VectorParams) else None
            local = self.path is not None
            m: int | None = None
            ef_construct: int | None = None
            if not local:  # local mode builds no index and reports made-up defaults
                hnsw = info.config.hnsw_config
                m, ef_construct = hnsw.m, hnsw.ef_construct
                if vector_params is not None and vector_params.hnsw_config is not None:
                    # A per-vector HNSW config overrides the collection's.
                    override = vector_params.hnsw_config
                    m = m if override.m is None else override.m
                    ef_construct = (
                        ef_construct if override.ef_construct is None else override.ef_construct
                    )
            return {
                "backend": "qdrant",
                "mode": "local" if local else "server",
                "location": str(self.path) if local else self.url,
                "space": self.space,
                "dim": self.dim,
                "metric": self.metric,
                "distance": str(_DISTANCES[self.metric].value),
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

    def __del__(self) -> None:
        # Give a shared local-mode client back if the store is dropped unclosed.
        with contextlib.suppress(Exception):
            self._release()

    def __enter__(self) -> QdrantStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f"path={str(self.path)!r}" if self.path is not None else f"url={self.url!r}"
        return f"QdrantStore({self.space!r}, dim={self.dim}, {where})"

    # ------------------------------------------------------------------ connection

    def _connect(self) -> QdrantClient:
        if self._closed:
            raise StoreError(f"the vector store of space {self.space!r} is closed")
        if self._client is None:
            if self.path is not None:
                self._shared = _acquire_local(self.path)
                self._client = self._shared.client
            else:
                self._client = QdrantClient(
                    url=self.url, api_key=self._api_key, timeout=math.ceil(self.timeout)
                )
        return self._client

    def _release(self) -> None:
        shared, self._shared = self._shared, None
        client, self._client = self._client, None
        self._count_cache = None
        if shared is not None and self.path is not None:
            _release_local(self.path, shared)
        elif client is not None:
            client.close()

    def _ready(self) -> QdrantClient:
        """The client, connected and with the collection checked or created."""
        if self._client is not None and not self._closed:
            return self._client
        client = self._connect()
        try:
            self._open_collection(client)
        except BaseException:
            self._release()
            raise
        return client

    def _open_collection(self, client: QdrantClient) -> None:
        exists = self._call("open", client.collection_exists, collection_name=self.collection)
        if not exists:
            try:
                self._call(
                    "create collection",
                    client.create_collection,
                    collection_name=self.collection,
                    vectors_config=models.VectorParams(
                        size=self.dim,
                        distance=_DISTANCES[self.metric],
                        on_disk=self.on_disk or None,
                    ),
                    hnsw_config=self._hnsw_config(),
                    quantization_config=self._quantization_config(),
                    # Fixed at creation: an existing collection keeps its own layout.
                    shard_number=self.shards,
                    replication_factor=self.replicas,
                    write_consistency_factor=self.write_consistency,
                )
            except StoreError:
                # Another process may have created it first; checking it below decides.
                if not self._call(
                    "open", client.collection_exists, collection_name=self.collection
                ):
                    raise
        info = self._call("open", client.get_collection, collection_name=self.collection)
        self._check_space(info)
        self._quantized = self._is_quantized(info)
        missing = [name for name in PAYLOAD_INDEXES if name not in info.payload_schema]
        with warnings.catch_warnings():
            # Local mode keeps no payload indexes and warns once that they do nothing.
            warnings.simplefilter("ignore", UserWarning)
            for name in missing:
                self._call(
                    "create payload index",
                    client.create_payload_index,
                    collection_name=self.collection,
                    field_name=name,
                    field_schema=PAYLOAD_INDEXES[name],
                    wait=True,
                )

    def _check_space(self, info: models.CollectionInfo) -> None:
        params = info.config.params.vectors
        if not isinstance(params, models.VectorParams):
            raise SpaceMismatchError(
                f"the Qdrant collection {self.collection!r} holds named vectors "
                f"({', '.join(sorted(params or {}))}), not a vitdex space"
            )
        wanted = _DISTANCES[self.metric]
        differences = [
            f"{what} {have!r} in Qdrant, {want!r} asked for"
            for what, have, want in (
                ("dim", params.size, self.dim),
                ("distance", str(params.distance.value), str(wanted.value)),
            )
            if have != want
        ]
        if differences:
            raise SpaceMismatchError(
                f"the Qdrant collection {self.collection!r} was built for another space "
                f"({'; '.join(differences)}). Re-embed into a new space, or drop the "
                "collection to rebuild it."
            )

    @staticmethod
    def _is_quantized(info: models.CollectionInfo) -> bool:
        params = info.config.params.vectors
        per_vector = params.quantization_config if isinstance(params, models.VectorParams) else None
        return (per_vector or info.config.quantization_config) is not None

    def _hnsw_config(self) -> models.HnswConfigDiff | None:
        if self.hnsw_m is None and self.hnsw_ef_construct is None:
            return None
        return models.HnswConfigDiff(m=self.hnsw_m, ef_construct=self.hnsw_ef_construct)

    def _quantization_config(self) -> models.ScalarQuantization | None:
        if self.quantization != "int8":
            return None
        return models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(
                type=models.ScalarType.INT8, quantile=0.99, always_ram=True
            )
        )

    # ------------------------------------------------------------------ requests

    def _call(
        self,
        what: str,
        fn: Callable[..., _T],
        *,
        passthrough: Callable[[BaseException], bool] | None = None,
        **kwargs: Any,
    ) -> _T:
        """Run one request, retrying transient failures with exponential backoff.

        Every request vitdex sends is idempotent (upserts by id, deletes by id, reads),
        so repeating one that may have reached the server is safe. Other failures
        become :class:`StoreError`, except those ``passthrough`` accepts.
        """
        delay = _BACKOFF_S
        shared = self._shared
        for attempt in range(_RETRIES + 1):
            try:
                if shared is not None:
                    # Stores of several spaces share one local-mode client, which is not
                    # safe to call from two threads at once.
                    with shared.lock:
                        return fn(**kwargs)
                return fn(**kwargs)
            except Exception as exc:
                if passthrough is not None and passthrough(exc):
                    raise
                if not _transient(exc) or attempt == _RETRIES:
                    raise StoreError(
                        f"Qdrant {what} on collection {self.collection!r} failed: "
                        f"{str(exc).strip() or type(exc).__name__}"
                    ) from exc
                wait = delay * random.uniform(0.5, 1.0)
                if isinstance(exc, ResourceExhaustedResponse):
                    wait = max(wait, float(exc.retry_after_s))
                log.warning(
                    "Qdrant %s failed (%s); retry %d of %d in %.1f s",
                    what,
                    type(exc).__name__,
                    attempt + 1,
                    _RETRIES,
                    wait,
                )
                time.sleep(wait)
                delay = min(delay * 2, _BACKOFF_MAX_S)
        raise AssertionError("unreachable")  # pragma: no cover

    def _upsert_points(
        self,
        ids: npt.NDArray[np.int64],
        vecs: npt.NDArray[np.float32],
        payloads: list[dict[str, Any]] | None,
    ) -> None:
        client = self._ready()
        self._call(
            "upsert",
            client.upsert,
            collection_name=self.collection,
            # float32 -> Python float is exact, so the stored float32 is bit-identical.
            points=models.Batch(ids=ids.tolist(), vectors=vecs.tolist(), payloads=payloads),
            wait=True,
        )

    def _replace_vectors(self, ids: npt.NDArray[np.int64], vecs: npt.NDArray[np.float32]) -> None:
        """Upsert without payloads, keeping the payload of points that already exist.

        A plain upsert replaces the whole point, payload included. ``update_vectors``
        keeps the payload but fails on points that do not exist, so existing ids (one
        cheap id-only lookup) go through it and new ones through a plain upsert. A point
        deleted between lookup and update makes the update fail; then look again.
        """
        client = self._ready()
        for _ in range(3):
            present = self._existing(ids)
            is_new = np.fromiter((i not in present for i in ids.tolist()), dtype=bool)
            if is_new.any():
                self._upsert_points(ids[is_new], vecs[is_new], None)
            old = ~is_new
            if not old.any():
                return
            try:
                self._call(
                    "update vectors",
                    client.update_vectors,
                    passthrough=_missing_point,
                    collection_name=self.collection,
                    points=[
                        models.PointVectors(id=i, vector=v)
                        for i, v in zip(ids[old].tolist(), vecs[old].tolist(), strict=True)
                    ],
                    wait=True,
                )
                return
            except Exception as exc:
                if not _missing_point(exc):
                    raise
                log.info("points vanished while their vectors were replaced; looking again")
        raise StoreError(
            f"Qdrant collection {self.collection!r}: points kept disappearing while their "
            "vectors were being replaced (another writer is deleting them)"
        )

    def _existing(self, ids: npt.NDArray[np.int64]) -> set[int]:
        """Which of ``ids`` are stored (ids only: no payload, no vectors)."""
        if ids.size == 0:
            return set()
        client = self._ready()
        records = self._call(
            "retrieve",
            client.retrieve,
            collection_name=self.collection,
            ids=[int(i) for i in ids.tolist()],
            with_payload=False,
            with_vectors=False,
        )
        return {int(r.id) for r in records}

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
        result = self._call("count", client.count, collection_name=self.collection, exact=False)
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

    def _id_array(self, ids: npt.ArrayLike) -> npt.NDArray[np.int64]:
        arr = np.asarray(ids)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.ndim != 1:
            raise ValueError(f"ids must be one-dimensional, got shape {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"ids must be integers, got {arr.dtype}")
        out = np.ascontiguousarray(arr, dtype=np.int64)
        if out.size and (out < 0).any():
            raise ValueError("ids must not be negative: Qdrant point ids are unsigned")
        return out

    def _vector_array(self, values: npt.ArrayLike, what: str) -> npt.NDArray[np.float32]:
        return check_vectors(values, self.dim, self.space, what)
