"""The embedded default vector store: FAISS search, every write durable on return.

One folder per space::

    meta.json         format, space, dim, metric, index type, generation g, snapshot name,
                      and the approximate index in use (spec, file, build number)
    index.<g>.faiss   snapshot of generation g (``IndexIDMap2`` over ``IndexFlatIP``): the
                      raw vectors, kept exactly; written once, then only ever mapped
                      read-only; ``get`` and every rebuild read these
    wal.bin           write-ahead log: the upserts and deletes made since that snapshot
    ann.<b>.<tag>.faiss  optional approximate index (HNSW, IVF) of build b, derived from
                      the raw vectors by :meth:`FaissStore.reindex`; never the only copy
    changed.<g>.npy   ids written or deleted between that build and snapshot g (int64)
    lock              ``flock`` target; one process writes at a time

A WAL record is a 36-byte little-endian header followed by its payload, written with one
``write`` and ``fdatasync``::

    magic "VXW1" | op u8 (1 upsert, 2 delete) | 3 pad | generation u64 | n u32 | dim u32
    | payload bytes u64 | CRC32 u32 of header-before-CRC + payload
    payload = ids int64[n], then (upsert only) vectors float32[n, dim]

Opening maps the snapshot and replays the records of its generation; a torn or corrupt
tail is cut off, never raised. ``flush`` folds the log into a new snapshot (see
:meth:`FaissStore._snapshot` for why a crash at any step loses and duplicates nothing).
Several processes may open one folder: writers take the lock per call, and every call
first catches up with what other processes wrote.

The raw vectors are an immutable, memory-mapped base plus a small overlay in memory:

- the base is the snapshot of generation g, opened with FAISS's ``IO_FLAG_MMAP_IFC``:
  its vectors are a read-only view of the file, paged in by the OS as they are read,
  shared with every process that maps the same file and dropped again under memory
  pressure. FAISS aborts the process on any write to such a view, so the base is never
  changed: no ``add_with_ids`` or ``remove_ids`` ever reaches it;
- the overlay is an in-memory ``IndexIDMap2(Flat)`` holding the current vector of each
  id upserted since the snapshot (replayed from the log on opening), beside the set of
  base ids *superseded* since the snapshot (deleted or overwritten).

Exact search searches the base with an id selector that skips the superseded ids (with
a filter: only the allowed ids not in the overlay), searches the overlay, and merges the
two top-k lists; ``get``, ``ids`` and ``count`` read both. A snapshot streams the base
minus the superseded ids, then the overlay, into the next snapshot file in chunks (in
the very bytes ``faiss.write_index`` writes for that index, so any version reads it),
maps the new file and empties the overlay: compaction never holds a second full copy
of the vectors. Resident memory is therefore the overlay, bounded by the log (at most
``max(wal_limit_bytes, snapshot size)``, emptied by every :meth:`FaissStore.flush`),
about 100 bytes of id bookkeeping a vector (plus, for SQ8/PQ, a position table);
:meth:`FaissStore.describe` reports resident and mapped bytes per vector apart. With a
FAISS too old for ``IO_FLAG_MMAP_IFC`` the base is read into memory instead, and is
still never changed. A snapshot replaced by a newer one is deleted at once; its disk
space returns once every process that maps it has caught up (at its next call).

The approximate index is never written to by upserts and deletes. Instead the store keeps
the set of ids changed since it was built (the ``changed`` file of the snapshot plus every
id the log touches): searches exclude those ids from the approximate results and search
the ones still present exactly, then merge. A new index file is committed, like a
snapshot, by replacing ``meta.json``; a crash before that leaves the previous index (or
none) in use and the new file as a leftover that opening deletes. An index is always
built right after a snapshot, from the base alone (the overlay is empty then), so every
id it may answer for, being unchanged since, sits in the base: compressed codes (SQ8,
PQ) are re-scored exactly from the base by position. Since nothing writes to it either,
the index is read from its file with ``IO_FLAG_MMAP_IFC`` as well (right after a build
too): HNSW's vectors and graph and IVF's lists are file pages, not process memory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, ParamSpec, TypeVar

import faiss
import numpy as np
import numpy.typing as npt

from vitdex.errors import SpaceMismatchError, StoreError
from vitdex.vectors.faiss.ann import (
    IndexSpec,
    build_index,
    code_bytes_per_vector,
    factory_string,
    parse_index_spec,
    search_parameters,
    training_shortfall,
    with_nlist,
)
from vitdex.vectors.store import SearchHit, VectorNotFoundError, check_vectors

__all__ = ["FaissStore"]

log = logging.getLogger(__name__)
_P = ParamSpec("_P")
_T = TypeVar("_T")

#: Format 2 is written only while an approximate index is in use (older readers, which
#: would not track the ids changed since its build, refuse it); plain stores stay 1.
FORMAT_VERSION = 2
_PLAIN_FORMAT = 1
INDEX_TYPE = "IDMap2,Flat"
_MAGIC = b"VXW1"
_OP_UPSERT = 1
_OP_DELETE = 2
_HEADER = struct.Struct("<4sB3xQIIQI")
_CRC = struct.Struct("<I")
_CRC_AT = _HEADER.size - _CRC.size
_SNAPSHOT_NAME = re.compile(r"^index\.(\d+)\.faiss$")
_ANN_NAME = re.compile(r"^ann\.(\d+)\.[a-z0-9_]+\.faiss$")
_CHANGED_NAME = re.compile(r"^changed\.(\d+)\.npy$")
_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
_META = "meta.json"
_WAL = "wal.bin"
_LOCK = "lock"
#: Read snapshots memory-mapped (FAISS >= 1.11); 0 reads them into memory instead.
_MMAP_FLAG: int = int(getattr(faiss, "IO_FLAG_MMAP_IFC", 0))
#: The header FAISS writes for an index: d i32, ntotal i64, two unused i64 (1 << 20),
#: is_trained u8, metric i32 (see :func:`_snapshot_prefix`).
_INDEX_HEADER = struct.Struct("=iqqq?i")
#: Bytes of raw vectors copied per step when a snapshot is written.
_COPY_BYTES = 16 << 20
#: Estimated resident bytes per id in FAISS's id map (8) and reverse hash map (~32).
_FAISS_ID_BYTES = 40
#: Estimated resident bytes per int in a Python set (table slot + int object).
_SET_ID_BYTES = 64


class _Record(NamedTuple):
    op: int
    generation: int
    ids: npt.NDArray[np.int64]
    vectors: npt.NDArray[np.float32] | None
    size: int


class _Delta(NamedTuple):
    changed: npt.NDArray[np.int64]  # every id changed since the build, sorted
    ids: npt.NDArray[np.int64]  # those still stored
    vectors: npt.NDArray[np.float32]  # their current raw vectors
    exclude: Any  # IDSelectorNot over ``changed``, or None when nothing changed
    keep_alive: Any  # the IDSelectorBatch the Not refers to (FAISS holds a raw pointer)
    params: dict[int, Any]  # search parameters with ``exclude``, per candidate count


class _Bad(NamedTuple):
    """Why replay stopped: ``torn`` (the log ends inside a record) or corrupt bytes."""

    torn: bool
    reason: str


class FaissStore:
    """Vectors of one space in ``folder``, searched exactly by inner product.

    Opening does no I/O; the first call maps the snapshot and replays the log into the
    in-memory overlay. Every :meth:`upsert` and :meth:`delete` is on disk when it returns
    (one appended log record and an ``fdatasync``; ``durable=False`` skips the syncs, for
    tests and benchmarks). The log is folded into a snapshot by :meth:`flush`, or on its
    own once it outgrows both ``wal_limit_bytes`` and the snapshot; either empties the
    overlay. Methods are thread-safe.

    ``search_threads`` caps FAISS's OpenMP threads during a search (``None``: FAISS's
    default, every core). When the cores are busy with other work, such as ViT inference
    or other processes, one thread is several times faster than spinning OpenMP teams.
    """

    #: Filters arrive as ``allowed_ids`` resolved in SQL; no payloads are kept.
    uses_payloads = False

    def __init__(
        self,
        folder: Path | str,
        space: str,
        dim: int,
        *,
        metric: str = "ip",
        durable: bool = True,
        wal_limit_bytes: int = 64 << 20,
        search_threads: int | None = None,
        rebuild_fraction: float = 0.1,
    ) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
        if search_threads is not None and search_threads < 1:
            raise ValueError(f"search_threads must be at least 1, got {search_threads}")
        self.folder = Path(folder)
        self._meta_path = str(self.folder / _META)  # stat at every call: no Path work
        self.space = space
        self.dim = int(dim)
        self.metric = metric
        self.durable = durable
        self._wal_limit = int(wal_limit_bytes)
        self._search_threads = search_threads
        self._rebuild_fraction = float(rebuild_fraction)
        self._lock = threading.RLock()
        self._closed = False
        # Set when memory may no longer match the disk (a failed write): reload before use.
        self._invalid = False
        self._pid = -1
        self._lock_fd = -1
        self._wal_fd = -1
        # The raw vectors: the snapshot, memory-mapped and never mutated (see the module
        # docstring), and what the log changed since: the overlay of upserted vectors
        # and the base ids superseded (deleted or overwritten) since the snapshot.
        self._base: faiss.IndexIDMap2 | None = None
        self._base_mapped = False
        self._overlay: faiss.IndexIDMap2 | None = None
        self._overlay_ids: set[int] = set()
        self._superseded: set[int] = set()
        # Search parameters excluding the superseded ids from the base (None: build on
        # the next exact search) and the selectors they point to (FAISS holds raw ones).
        self._base_params: tuple[faiss.SearchParameters, Any, Any] | None = None
        # Python-side set of every stored id: O(1) membership, so a batch of new ids
        # costs no O(n) scan, and missing ids are named without asking FAISS one by one.
        self._members: set[int] = set()
        self._generation = 0
        self._snapshot_name: str | None = None
        self._snapshot_bytes = 0
        self._meta_sig: tuple[int, int, int] | None = None
        # Bytes of wal.bin already reflected in memory; the file may hold more (another
        # process's appends) or a torn tail after it.
        self._wal_end = 0
        # The approximate index as meta.json names it (None: exact search only), the
        # index itself (None also while too few vectors exist to train it), and the ids
        # written or deleted since it was built: it must not answer for those.
        self._ann_meta: dict[str, Any] | None = None
        self._ann: faiss.Index | None = None
        # The index file is never written to once built, so it is read memory-mapped
        # like the base: its codes (and HNSW's graph) stay in the page cache, shared.
        self._ann_mapped = False
        self._ann_spec: IndexSpec | None = None
        self._changed: set[int] = set()
        self._changed_file: str | None = None
        # (present changed ids, their raw vectors, selector excluding every changed id),
        # rebuilt on the first search after a write.
        self._delta: _Delta | None = None
        # Bumped whenever another base is opened; keys the id -> position table below.
        self._base_version = 0
        # (base version, smallest id, position of each id - smallest or -1), or a None
        # table when the ids are too sparse for one. Built by the first re-scoring search.
        self._positions: tuple[int, int, npt.NDArray[np.int64] | None] | None = None
        self._raw_flat: Any = None  # the IndexFlat inside the base, as of that table

    # ------------------------------------------------------------------ public API

    def upsert(
        self,
        ids: npt.ArrayLike,
        vectors: npt.ArrayLike,
        payloads: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """Store ``vectors`` [n, dim] under ``ids`` [n], replacing existing ones.

        The last of duplicate ids within the call wins. ``payloads`` are checked for
        length and otherwise unused: metadata lives in the SQL catalog, and filters
        arrive as ``allowed_ids``. Durable (one log record) when the call returns.
        """
        id_arr = self._id_array(ids)
        vecs = self._vector_array(vectors, "vectors")
        if vecs.shape[0] != id_arr.shape[0]:
            raise ValueError(f"{id_arr.shape[0]} ids but {vecs.shape[0]} vectors")
        if payloads is not None and len(payloads) != id_arr.shape[0]:
            raise ValueError(f"{id_arr.shape[0]} ids but {len(payloads)} payloads")
        if id_arr.size == 0:
            return
        if id_arr.size > 1:
            # Last duplicate wins: unique over the reversed ids finds each id's last row.
            _, last = np.unique(id_arr[::-1], return_index=True)
            if last.size != id_arr.size:
                keep = np.sort(id_arr.size - 1 - last)
                id_arr, vecs = id_arr[keep], vecs[keep]
        with self._lock, self._writing():
            self._append(_OP_UPSERT, id_arr, vecs)
            self._guarded(self._apply_upsert, id_arr, vecs)
            self._maybe_compact()

    def delete(self, ids: npt.ArrayLike) -> int:
        """Remove the vectors of ``ids``; returns how many of them were stored."""
        id_arr = np.unique(self._id_array(ids))
        if id_arr.size == 0:
            return 0
        with self._lock, self._writing():
            present = self._present(id_arr)
            if present.size == 0:
                return 0
            self._append(_OP_DELETE, present, None)
            removed = self._guarded(self._apply_delete, present)
            self._maybe_compact()
            return removed

    def search(
        self,
        queries: npt.ArrayLike,
        k: int,
        *,
        allowed_ids: npt.ArrayLike | None = None,
    ) -> list[list[SearchHit]]:
        """The ``k`` best stored vectors for each query, best first.

        ``queries`` is [q, dim] or a single [dim] vector (one result list either way).
        Fewer than ``k`` hits come back when fewer vectors exist (or are allowed).
        ``allowed_ids`` restricts the search to those ids inside FAISS (an
        ``IDSelectorBatch``), so a narrow filter still yields up to ``k`` hits.

        With an approximate index (see :meth:`reindex`) the index answers for the ids
        unchanged since its build, the raw vectors exactly for the rest, merged by score.
        A filter narrower than ``exact_filter_fraction`` of the store is searched exactly:
        graph and list walks restricted to a few ids miss most of them.
        """
        q = self._vector_array(queries, "queries")
        if k < 0:
            raise ValueError(f"k must not be negative, got {k}")
        allowed = None if allowed_ids is None else np.unique(self._id_array(allowed_ids))
        with self._lock:
            self._ready_for_read()
            ntotal = len(self._members)
            if allowed is not None:
                allowed = self._present(allowed)
            limit = ntotal if allowed is None else int(allowed.size)
            k_eff = min(int(k), limit)
            if k_eff == 0 or q.shape[0] == 0:
                return [[] for _ in range(q.shape[0])]
            if self._ann is not None and (
                allowed is None or allowed.size > self.exact_filter_fraction * ntotal
            ):
                return self._search_ann(q, k_eff, allowed, ntotal)
            return self._search_exact(q, k_eff, allowed)

    #: Filters allowing at most this fraction of the store are searched exactly.
    exact_filter_fraction = 0.05

    def _search_exact(
        self, q: npt.NDArray[np.float32], k: int, allowed: npt.NDArray[np.int64] | None
    ) -> list[list[SearchHit]]:
        """Exact top ``k`` over base and overlay; ``allowed`` holds stored ids only."""
        base, overlay = self._loaded(), self._overlay_index()
        parts: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]] = []
        if allowed is None:
            base_live = int(base.ntotal) - len(self._superseded)
            if base_live > 0:
                params = self._base_exclusion()
                parts.append(self._faiss_search(base, q, min(k, base_live), params))
            if overlay.ntotal:
                parts.append(self._faiss_search(overlay, q, min(k, int(overlay.ntotal)), None))
        else:
            # A stored id not in the overlay is a base id that was not superseded: each
            # side searches only its own share of the allowed ids.
            in_overlay = self._in_overlay(allowed)
            for index, chosen in ((base, allowed[~in_overlay]), (overlay, allowed[in_overlay])):
                if chosen.size:
                    selector = faiss.IDSelectorBatch(chosen)  # referenced until searched
                    params = faiss.SearchParameters()
                    params.sel = selector
                    parts.append(self._faiss_search(index, q, min(k, int(chosen.size)), params))
        if not parts:
            return [[] for _ in range(q.shape[0])]
        distances, labels = parts[0]
        if self.metric == "l2":
            distances = -distances  # squared distance: negate so higher is closer
        for more_distances, more_labels in parts[1:]:
            if self.metric == "l2":
                more_distances = -more_distances
            labels, distances = _merge_top(labels, distances, more_labels, more_distances, k)
        return _hit_lists(labels, distances, k)

    def _base_exclusion(self) -> faiss.SearchParameters | None:
        """Parameters hiding the superseded ids from the base; None when there are none.

        Built once per change of the superseded set, not per search.
        """
        if not self._superseded:
            return None
        cached = self._base_params
        if cached is None:
            inner = faiss.IDSelectorBatch(self._superseded_array())
            exclude = faiss.IDSelectorNot(inner)
            params = faiss.SearchParameters()
            params.sel = exclude
            cached = self._base_params = (params, exclude, inner)
        return cached[0]

    def _search_ann(
        self,
        q: npt.NDArray[np.float32],
        k: int,
        allowed: npt.NDArray[np.int64] | None,
        ntotal: int,
    ) -> list[list[SearchHit]]:
        ann = self._ann
        assert ann is not None
        spec = self._ann_spec
        if spec is None:  # parsed once per load, not per query
            assert self._ann_meta is not None
            spec = self._ann_spec = parse_index_spec(str(self._ann_meta["spec"]))
        delta = self._delta_now()
        rescore = spec.rescored
        fetch = k * spec.rerank if rescore else k
        # What the index may answer for: not the changed ids, and only allowed ones.
        if allowed is None:
            delta_ids, delta_vecs = delta.ids, delta.vectors
            fetch = min(fetch, ntotal - int(delta_ids.size))
            # Built once per changed-set version and fetch size, not per call.
            params = delta.params.get(fetch)
            if params is None and fetch > 0:
                params = delta.params[fetch] = search_parameters(spec, fetch, delta.exclude)
        else:
            ann_ids = np.setdiff1d(allowed, delta.changed, assume_unique=True)
            selector = faiss.IDSelectorBatch(ann_ids)  # referenced until the search ends
            mask = np.isin(delta.ids, allowed, assume_unique=True)
            delta_ids, delta_vecs = delta.ids[mask], delta.vectors[mask]
            fetch = min(fetch, int(ann_ids.size))
            params = search_parameters(spec, fetch, selector) if fetch > 0 else None
        if fetch > 0:
            distances, labels = self._faiss_search(ann, q, fetch, params)
            if rescore:
                labels, distances = self._rescore(q, labels, k)
            elif self.metric == "l2":
                distances = -distances
        else:
            labels = np.full((q.shape[0], 0), -1, dtype=np.int64)
            distances = np.zeros((q.shape[0], 0), dtype=np.float32)
        if delta_ids.size:
            labels, distances = self._merge_exact(q, labels, distances, delta_ids, delta_vecs, k)
        hits = _hit_lists(labels, distances, k)
        # A walk cut short by the selector can return fewer hits than exist: answer those
        # queries exactly rather than return a short list.
        short = [r for r, row in enumerate(hits) if len(row) < k]
        if short:
            redo = self._search_exact(q[short], k, allowed)
            for r, row in zip(short, redo, strict=True):
                hits[r] = row
        return hits

    def _merge_exact(
        self,
        q: npt.NDArray[np.float32],
        labels: npt.NDArray[np.int64],
        distances: npt.NDArray[np.float32],
        delta_ids: npt.NDArray[np.int64],
        delta_vecs: npt.NDArray[np.float32],
        k: int,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Merge the index's hits with the changed ids still present, scored exactly."""
        exact = self._scores(q, delta_vecs)
        if delta_ids.size > 4 * k:
            # Many changed ids: only each query's best k of them can make its top k.
            best = np.sort(np.argpartition(-exact, k - 1, axis=1)[:, :k], axis=1)
            exact = np.take_along_axis(exact, best, axis=1)
            exact_ids = delta_ids[best]
        else:
            exact_ids = np.broadcast_to(delta_ids, exact.shape)
        return _merge_top(labels, distances, exact_ids, exact, k)

    def _rescore(
        self, q: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], k: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Exact scores for compressed-code hits, from the raw vectors; best ``k`` kept.

        The same refinement as FAISS's ``IndexRefineFlat``, done here because that
        class wants the candidates' positions in a flat index of its own (a second copy
        of the raw vectors), while the store's raw vectors are keyed by id. Every
        candidate is unchanged since the index was built, so it sits in the base, read
        in place by position.
        """
        nq, fetch = labels.shape
        flat_ids = labels.reshape(-1)
        smallest = int(flat_ids.min())
        if smallest < 0:  # fewer candidates than asked somewhere: mask them
            return self._rescore_masked(q, labels, k)
        positions = self._positions_of(flat_ids, smallest)
        if positions is not None:
            # What IndexRefineFlat does: exact distances read in place, no vector copied.
            raw = self._raw_flat
            exact = np.empty((nq, fetch), dtype=np.float32)
            ptr = faiss.swig_ptr
            raw.compute_distance_subset(nq, ptr(q), fetch, ptr(exact), ptr(positions))
            if self.metric == "l2":
                exact = -exact
            if nq == 1:
                order1 = np.argsort(-exact[0], kind="stable")[:k]
                return flat_ids[order1][None, :], exact[0, order1][None, :]
            order0 = np.argsort(-exact, axis=1, kind="stable")[:, :k]
            rows0 = np.arange(nq)[:, None]
            return labels[rows0, order0], exact[rows0, order0]
        vecs = self._reconstruct(flat_ids)
        if nq == 1:
            row = q[0]
            if self.metric == "ip":
                scores = vecs @ row
            else:
                diff1 = vecs - row
                scores = -np.einsum("ij,ij->i", diff1, diff1)
            order = np.argsort(-scores, kind="stable")[:k]
            return flat_ids[order][None, :], scores[order][None, :]
        stacked = vecs.reshape(nq, fetch, self.dim)
        if self.metric == "ip":
            scores2 = np.matmul(stacked, q[:, :, None])[:, :, 0]
        else:
            diff = stacked - q[:, None, :]
            scores2 = -np.einsum("ijk,ijk->ij", diff, diff)
        order2 = np.argsort(-scores2, axis=1, kind="stable")[:, :k]
        rows = np.arange(nq)[:, None]
        return labels[rows, order2], scores2[rows, order2]

    def _rescore_masked(
        self, q: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], k: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        found = labels != -1
        flat_ids = labels[found]
        scores = np.full(labels.shape, -np.inf, dtype=np.float32)
        if flat_ids.size:
            vecs = self._reconstruct(flat_ids)
            rows = np.nonzero(found)[0]
            if self.metric == "ip":
                exact = np.einsum("ij,ij->i", q[rows], vecs)
            else:
                exact = -np.sum((q[rows] - vecs) ** 2, axis=1)
            scores[found] = exact
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        rows2 = np.arange(labels.shape[0])[:, None]
        return labels[rows2, order], scores[rows2, order]

    def _positions_of(
        self, ids: npt.NDArray[np.int64], smallest: int
    ) -> npt.NDArray[np.int64] | None:
        """Where base ``ids`` (the least of them: ``smallest``) sit in the base's flat
        index, or None (no table, or an id outside the base).

        A dense table over the id range, built (O(n), vectorised) on the first call after
        another base was opened; the base never changes in between. Ids spread over more
        than four times their count (not SQL row ids) get no table; callers then
        reconstruct.
        """
        cached = self._positions
        if cached is None or cached[0] != self._base_version:
            id_map = self._base_ids()
            table: npt.NDArray[np.int64] | None = None
            lo = 0
            if id_map.size:
                lo, hi = int(id_map.min()), int(id_map.max())
                if hi - lo < 4 * id_map.size + 1024:
                    table = np.full(hi - lo + 1, -1, dtype=np.int64)
                    table[id_map - lo] = np.arange(id_map.size, dtype=np.int64)
            cached = self._positions = (self._base_version, lo, table)
            self._raw_flat = faiss.downcast_index(self._loaded().index)
        _, lo, table = cached
        if table is None or smallest < lo:
            return None
        try:  # past the table's end raises; a hole in the id range reads -1
            positions = table.take(ids - lo)
        except IndexError:
            return None
        return positions if positions.min() >= 0 else None

    def _reconstruct(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """The raw vectors of stored ``ids``, each read from the overlay or the base."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not self._overlay_ids or ids.size == 0:
            return self._fetch(self._loaded(), ids)
        in_overlay = self._in_overlay(ids)
        if in_overlay.all():
            return self._fetch(self._overlay_index(), ids)
        if not in_overlay.any():
            return self._fetch(self._loaded(), ids)
        out = np.empty((ids.size, self.dim), dtype=np.float32)
        out[in_overlay] = self._fetch(self._overlay_index(), ids[in_overlay])
        out[~in_overlay] = self._fetch(self._loaded(), ids[~in_overlay])
        return out

    def _fetch(
        self, index: faiss.IndexIDMap2, ids: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        """The vectors of ``ids`` held by ``index``, in one FAISS call (no Python wrapper)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        out = np.empty((ids.size, self.dim), dtype=np.float32)
        if ids.size:
            raw: Any = index  # the SWIG method under FAISS's Python wrapper
            raw.reconstruct_batch_c(ids.size, faiss.swig_ptr(ids), faiss.swig_ptr(out))
        return out

    def _scores(
        self, q: npt.NDArray[np.float32], vecs: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """Exact similarity of every query to every vector (higher is closer)."""
        if self.metric == "ip":
            return np.asarray(q @ vecs.T, dtype=np.float32)
        sq = (q * q).sum(1)[:, None] - 2 * (q @ vecs.T) + (vecs * vecs).sum(1)[None, :]
        return np.asarray(-sq, dtype=np.float32)

    def _faiss_search(
        self,
        index: faiss.Index,
        q: npt.NDArray[np.float32],
        k: int,
        params: faiss.SearchParameters | None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        # ``q`` is C-contiguous float32 (see _vector_array): straight to the C++ search,
        # without the checks and conversions of FAISS's Python wrapper.
        n = q.shape[0]
        searcher: Any = index
        distances = np.empty((n, k), dtype=np.float32)
        labels = np.empty((n, k), dtype=np.int64)
        args = (n, faiss.swig_ptr(q), k, faiss.swig_ptr(distances), faiss.swig_ptr(labels))
        if self._search_threads is None:
            searcher.search_c(*args, params)
        else:
            # OpenMP keeps this setting per calling thread: set it, then put it back.
            before = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(self._search_threads)
            try:
                searcher.search_c(*args, params)
            finally:
                faiss.omp_set_num_threads(before)
        return distances, labels

    def _delta_now(self) -> _Delta:
        """The changed ids still present with their vectors, and a selector for all."""
        delta = self._delta
        if delta is None:
            if not self._changed:  # nothing changed since the build: nothing to exclude
                empty = np.empty(0, dtype=np.int64)
                delta = _Delta(empty, empty, np.empty((0, self.dim), np.float32), None, None, {})
            else:
                changed = np.fromiter(self._changed, dtype=np.int64, count=len(self._changed))
                changed.sort()
                present = self._present(changed)
                vectors = (
                    self._reconstruct(present)
                    if present.size
                    else np.empty((0, self.dim), dtype=np.float32)
                )
                inner = faiss.IDSelectorBatch(changed)
                delta = _Delta(changed, present, vectors, faiss.IDSelectorNot(inner), inner, {})
            self._delta = delta
        return delta

    def get(self, ids: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """The stored vectors of ``ids`` [n, dim], bit-identical, in the order asked.

        Raises :class:`VectorNotFoundError` (a ``KeyError``) naming the missing ids.
        """
        id_arr = self._id_array(ids)
        with self._lock:
            self._ready_for_read()
            missing = [i for i in id_arr.tolist() if i not in self._members]
            if missing:
                raise VectorNotFoundError(self.space, missing)
            return self._reconstruct(id_arr)

    def ids(self) -> npt.NDArray[np.int64]:
        """Every stored id, sorted."""
        with self._lock:
            self._ready_for_read()
            base_ids, keep, overlay_ids = self._live_ids()
        live_base = base_ids if keep is None else base_ids[keep]
        return np.sort(np.concatenate([live_base, overlay_ids]))

    def count(self) -> int:
        """How many vectors the store holds."""
        with self._lock:
            self._ready_for_read()
            return len(self._members)

    def flush(self) -> None:
        """Fold the log into a new snapshot, so that opening reads one file and no log.

        With an approximate index, also rebuild it when it is due: once enough vectors
        exist to train it, or once more than ``rebuild_fraction`` of the ids changed
        since its build (each of those costs exact work at every search).
        """
        with self._lock, self._writing():
            if self._wal_end > 0 or self._snapshot_name is None:
                self._snapshot()
            if self._rebuild_due():
                assert self._ann_meta is not None
                self._build(parse_index_spec(str(self._ann_meta["spec"])), None)

    def reindex(
        self, spec: str, progress: Callable[[str, float], None] | None = None
    ) -> dict[str, Any]:
        """Search with the index ``spec`` from now on, built from the stored raw vectors.

        ``spec`` is ``flat`` (exact; drops any approximate index), ``hnsw[:M=..,
        efConstruction=..,efSearch=..]`` or ``ivf[:nlist=..,nprobe=..,code=flat|sq8|pq,
        pq_m=..]``. An IVF spec with too few vectors to train falls back to exact search
        and is trained by the first :meth:`flush` that finds enough. No vector is
        re-embedded or changed: :meth:`get` returns the same bytes before and after.
        ``progress(stage, fraction)`` reports the build. Writers wait while it builds.

        Returns ``spec``, ``index_type``, ``count``, ``build_seconds``, ``index_bytes``
        and ``fallback`` (why the index is not in use yet, or ``None``).
        """
        parsed = parse_index_spec(spec)
        with self._lock, self._writing():
            # Build from a snapshot, so the changed-id set starts empty with an empty log.
            if self._wal_end > 0 or self._snapshot_name is None:
                self._snapshot()
            return self._build(parsed, progress)

    def _build(
        self, spec: IndexSpec, progress: Callable[[str, float], None] | None
    ) -> dict[str, Any]:
        """Build, save and commit the index of ``spec`` (lock held, log empty).

        Built from the base alone: re-scoring reads candidates from the base by position,
        so every id the index holds must be there (callers snapshot first, which empties
        the overlay; the check below only guards that).
        """
        if self._overlay_ids or self._superseded:
            self._snapshot()
        raw = self._loaded()
        n = int(raw.ntotal)
        started = time.perf_counter()
        index: faiss.Index | None = None
        fallback = training_shortfall(spec, n, self.dim)
        if fallback is not None:
            log.warning("%s: %s", self.folder, fallback)
        build = int(self._ann_meta.get("build", 0)) + 1 if self._ann_meta else 1
        name: str | None = None
        size = 0
        if not spec.exact and fallback is None:
            ids = self._base_ids()
            # A view of the mapped base: no second copy of the vectors while building.
            vectors = self._codes(raw)
            try:
                index = build_index(spec, ids, vectors, _METRICS[self.metric], progress)
            except RuntimeError as exc:
                raise StoreError(f"could not build {spec.canonical()}: {exc}") from exc
            name = f"ann.{build}.{spec.tag}.faiss"
            size = self._write_index_file(index, name)
        seconds = time.perf_counter() - started
        ann_meta = None
        if not spec.exact:
            ann_meta = {
                "spec": spec.canonical(),
                "file": name,
                "build": build,
                "built_count": n,
                "factory": factory_string(spec, n, self.dim) if name else None,
                "fallback": fallback,
            }
        old_file = self._ann_meta.get("file") if self._ann_meta else None
        old_changed = self._changed_file
        # The commit point: until meta.json names the new file, the old index is in use.
        meta = self._meta(
            generation=self._generation,
            snapshot=self._snapshot_name,
            count=n,
            ann=ann_meta,
            changed=None,
        )
        self._write_meta(meta)
        self._meta_sig = self._stat_meta()
        self._ann_meta = ann_meta
        self._ann = index
        self._ann_mapped = False
        if name and _MMAP_FLAG:
            # Serve from the file just committed, mapped, and let the built copy go.
            with contextlib.suppress(RuntimeError):
                self._ann = faiss.read_index(str(self.folder / name), _MMAP_FLAG)
                self._ann_mapped = True
        self._ann_spec = None
        self._changed = set()
        self._changed_file = None
        self._delta = None
        for leftover in (old_file, old_changed):
            if leftover and leftover != name:
                self._remove_snapshot(str(leftover))
        return {
            "spec": spec.canonical(),
            "index_type": ann_meta["factory"] if ann_meta and ann_meta["factory"] else INDEX_TYPE,
            "count": n,
            "build_seconds": seconds,
            "index_bytes": size,
            "fallback": fallback,
        }

    def _rebuild_due(self) -> bool:
        meta = self._ann_meta
        if meta is None:
            return False
        n = len(self._members)
        if meta.get("file") is None:
            spec = parse_index_spec(str(meta["spec"]))
            return training_shortfall(spec, n, self.dim) is None
        return len(self._changed) > self._rebuild_fraction * max(n, 1)

    def close(self) -> None:
        """Release the files and the index. Writes nothing: every call was durable already.

        Any later call raises :class:`StoreError`; open a new store to continue.
        """
        with self._lock:
            self._closed = True
            self._drop()

    def describe(self) -> dict[str, Any]:
        """Backend, space, dim, metric, index type, generation, count, sizes on disk, and
        memory: resident (held by this process) apart from mapped (the base's file pages,
        read on demand, shared between processes and reclaimable by the OS).

        ``memory_bytes_per_vector`` is the resident part per stored vector: the id
        bookkeeping, the overlay (vectors written since the snapshot) and the approximate
        index; ``mapped_bytes_per_vector`` the base's. Both are estimates from sizes.
        """
        with self._lock:
            self._ready_for_read()
            count = len(self._members)
            meta_bytes = _size(self.folder / _META)
            ann = self._ann_meta or {}
            ann_file = ann.get("file")
            ann_bytes = _size(self.folder / str(ann_file)) if ann_file else 0
            changed_bytes = _size(self.folder / self._changed_file) if self._changed_file else 0
            ann_per_vector = code_bytes_per_vector(self._ann) if self._ann is not None else 0.0
            spec = parse_index_spec(str(ann["spec"])) if ann else IndexSpec()
            resident, mapped = self._memory(ann_per_vector)
            # With nothing stored: what the next vector written costs (it joins the overlay).
            per_new = 4 * self.dim + _FAISS_ID_BYTES + 2 * _SET_ID_BYTES
            return {
                "backend": "faiss",
                "space": self.space,
                "dim": self.dim,
                "metric": self.metric,
                # The index searches use, in faiss.index_factory terms.
                "index_type": ann.get("factory") or INDEX_TYPE,
                "index_spec": with_nlist(spec, int(ann.get("built_count", count))).canonical(),
                "raw_index_type": INDEX_TYPE,
                "exact": self._ann is None,
                # False while an IVF spec waits for enough vectors (exact fallback).
                "trained": bool(self._ann.is_trained) if self._ann is not None else not ann,
                "fallback": ann.get("fallback"),
                "format": FORMAT_VERSION if ann else _PLAIN_FORMAT,
                "folder": str(self.folder),
                "count": count,
                "generation": self._generation,
                "index_build": ann.get("build"),
                "changed_since_build": len(self._changed),
                "rebuild_due": self._rebuild_due(),
                "snapshot_bytes": self._snapshot_bytes,
                "wal_bytes": self._wal_end,
                "index_bytes": ann_bytes,
                "bytes_on_disk": self._snapshot_bytes
                + self._wal_end
                + meta_bytes
                + ann_bytes
                + changed_bytes,
                # Where the raw vectors of the snapshot are: "mapped" or read into "memory".
                "raw_storage": "mapped" if self._base_mapped else "memory",
                "index_storage": (
                    None if self._ann is None else "mapped" if self._ann_mapped else "memory"
                ),
                "overlay_count": int(self._overlay_index().ntotal),
                "superseded_count": len(self._superseded),
                "resident_bytes": resident,
                "mapped_bytes": mapped,
                "memory_bytes_per_vector": resident / count if count else float(per_new),
                "mapped_bytes_per_vector": mapped / count if count else 0.0,
                # Index codes over raw float32: 1.0 for HNSW/IVF-Flat, 0.25 for SQ8...
                "index_code_ratio": ann_per_vector / (4 * self.dim) if ann_per_vector else None,
                "durable": self.durable,
            }

    def _memory(self, ann_per_vector: float) -> tuple[int, int]:
        """Estimated (resident, mapped) bytes of the raw vectors, the ids and the index."""
        raw = 4 * self.dim
        base_n = int(self._loaded().ntotal)
        overlay_n = int(self._overlay_index().ntotal)
        base_codes = base_n * raw  # superseded rows included: they stay in the file
        mapped = base_codes if self._base_mapped else 0
        resident = base_codes - mapped + base_n * _FAISS_ID_BYTES
        resident += overlay_n * (raw + _FAISS_ID_BYTES)
        sets = len(self._members) + len(self._overlay_ids) + len(self._superseded)
        resident += _SET_ID_BYTES * (sets + len(self._changed))
        delta = self._delta
        if delta is not None:  # the changed ids' vectors, copied for exact search
            resident += delta.changed.nbytes + delta.ids.nbytes + delta.vectors.nbytes
        table = self._positions[2] if self._positions is not None else None
        if table is not None:
            resident += table.nbytes
        if self._ann is not None:
            ann_bytes = round(ann_per_vector * int(self._ann.ntotal))
            if self._ann_mapped:
                mapped += ann_bytes
            else:
                resident += ann_bytes
        return resident, mapped

    def __del__(self) -> None:
        # The descriptors are plain ints: close them if the store is dropped unclosed.
        with contextlib.suppress(Exception):
            self._drop()

    def __enter__(self) -> FaissStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FaissStore({str(self.folder)!r}, space={self.space!r}, dim={self.dim})"

    # ------------------------------------------------------------------ loading

    def _loaded(self) -> faiss.IndexIDMap2:
        """The base: the snapshot of this generation, memory-mapped. Never mutate it:
        FAISS aborts the process on a write to a mapped index."""
        assert self._base is not None
        return self._base

    def _overlay_index(self) -> faiss.IndexIDMap2:
        """The in-memory vectors of the ids upserted since the snapshot."""
        assert self._overlay is not None
        return self._overlay

    def _set_base(self, base: faiss.IndexIDMap2, *, mapped: bool) -> None:
        """Use ``base`` from now on, with an empty overlay (lock held)."""
        # Forget everything that points into the old base before it is freed (unmapped).
        self._raw_flat = None
        self._positions = None
        self._base_params = None
        self._base = base
        self._base_mapped = mapped
        self._base_version += 1
        self._overlay = faiss.IndexIDMap2(self._new_flat())
        self._overlay_ids = set()
        self._superseded = set()

    def _base_ids(self) -> npt.NDArray[np.int64]:
        """The base's ids in storage order (a copy)."""
        ids = faiss.vector_to_array(self._loaded().id_map)
        return ids.astype(np.int64, copy=False)

    def _live_ids(
        self,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_] | None, npt.NDArray[np.int64]]:
        """The base's ids, which of them still hold (None: all), and the overlay's ids."""
        base_ids = self._base_ids()
        keep = ~np.isin(base_ids, self._superseded_array()) if self._superseded else None
        overlay_ids = faiss.vector_to_array(self._overlay_index().id_map)
        return base_ids, keep, overlay_ids.astype(np.int64, copy=False)

    def _codes(self, index: faiss.IndexIDMap2) -> npt.NDArray[np.float32]:
        """The raw vectors inside ``index`` [ntotal, dim] as a read-only view, no copy.

        Valid only while ``index`` is alive: for the base, until another base is set.
        """
        n = int(index.ntotal)
        if n == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        flat: Any = faiss.downcast_index(index.index)
        view = faiss.rev_swig_ptr(flat.get_xb(), n * self.dim).reshape(n, self.dim)
        view.flags.writeable = False  # a write to a mapped page would crash the process
        return view

    def _ensure_open(self) -> None:
        """Open the files and load everything on first use (or after a fork or failure)."""
        if self._closed:
            raise StoreError(f"the vector store of space {self.space!r} is closed")
        if self._base is not None and not self._invalid and self._pid == os.getpid():
            return
        # A forked child shares the parent's descriptors, and with them the flock:
        # it needs its own.
        self._drop()
        if not self.folder.is_dir():
            self.folder.mkdir(parents=True, exist_ok=True)
            self._sync_dir(self.folder.parent)
        self._lock_fd = os.open(self.folder / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        wal_path = self.folder / _WAL
        created = not wal_path.exists()
        self._wal_fd = os.open(wal_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._pid = os.getpid()
        if created:
            self._sync_dir()
        with self._flocked(fcntl.LOCK_EX):
            self._load(repair=True)

    def _drop(self) -> None:
        for fd in (self._wal_fd, self._lock_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wal_fd = self._lock_fd = -1
        self._raw_flat = None
        self._positions = None
        self._base_params = None
        self._base = None
        self._base_mapped = False
        self._overlay = None
        self._overlay_ids = set()
        self._superseded = set()
        self._members = set()
        self._meta_sig = None
        self._wal_end = 0
        self._ann_meta = None
        self._ann = None
        self._ann_mapped = False
        self._ann_spec = None
        self._changed = set()
        self._changed_file = None
        self._delta = None

    def _load(self, *, repair: bool) -> None:
        """Map meta's snapshot and replay the log from scratch; with ``repair``, tidy the
        folder too."""
        self._invalid = True  # until the load completes: a failed one is retried, not used
        meta = self._read_meta(create=repair)
        generation = int(meta["generation"])
        snapshot = meta.get("snapshot")
        if snapshot is None:
            # No snapshot yet: an empty base (in memory, never mutated either).
            index = faiss.IndexIDMap2(self._new_flat())
            snapshot_bytes = 0
        else:
            index, snapshot_bytes = self._read_snapshot(str(snapshot))
        self._set_base(index, mapped=snapshot is not None and _MMAP_FLAG != 0)
        self._members = set(self._base_ids().tolist())
        self._generation = generation
        self._snapshot_name = None if snapshot is None else str(snapshot)
        self._snapshot_bytes = snapshot_bytes
        self._load_ann(meta)
        self._meta_sig = self._stat_meta()
        self._wal_end = 0
        if repair:
            self._remove_leftovers()
        self._replay(repair=repair)
        self._invalid = False

    def _read_meta(self, *, create: bool) -> dict[str, Any]:
        path = self.folder / _META
        try:
            meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            if not create:
                raise StoreError(f"{path} has disappeared; the store cannot be read") from None
            leftovers = [p.name for p in self.folder.iterdir() if _SNAPSHOT_NAME.match(p.name)]
            if leftovers or _size(self.folder / _WAL) > 0:
                raise StoreError(
                    f"{path} is missing but the folder holds vector data "
                    f"({', '.join([*leftovers, _WAL])}); refusing to guess what it is. "
                    "Move the folder away and re-index to rebuild it."
                ) from None
            meta = self._meta(generation=0, snapshot=None, count=0)
            self._write_meta(meta)
            return meta
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc
        if not isinstance(meta, dict) or not isinstance(meta.get("generation"), int):
            raise StoreError(f"{path} is not a vitdex store description")
        if meta.get("backend") != "faiss" or int(meta.get("format", 99)) > FORMAT_VERSION:
            raise StoreError(
                f"{path} describes a {meta.get('backend')!r} store of format "
                f"{meta.get('format')!r}; this vitdex reads faiss stores up to format "
                f"{FORMAT_VERSION}"
            )
        differences = [
            f"{field} {meta.get(field)!r} on disk, {wanted!r} asked for"
            for field, wanted in (("space", self.space), ("dim", self.dim), ("metric", self.metric))
            if meta.get(field) != wanted
        ]
        if differences:
            raise SpaceMismatchError(
                f"the vector store in {self.folder} was built for another space "
                f"({'; '.join(differences)}). Re-embed into a new space, or move the "
                "folder away to rebuild it."
            )
        return meta

    def _load_ann(self, meta: Mapping[str, Any]) -> None:
        """Read the approximate index and changed ids that ``meta`` names (lock held).

        Read here, with the raw snapshot, rather than at the first search: under the
        folder lock, so another process cannot replace the files half-way.
        """
        ann = meta.get("ann")
        self._ann_meta = dict(ann) if isinstance(ann, Mapping) else None
        self._ann = None
        self._ann_mapped = False
        self._ann_spec = None
        self._changed = set()
        self._changed_file = None
        self._delta = None
        if self._ann_meta is None:
            return
        parse_index_spec(str(self._ann_meta.get("spec")))  # refuse a spec we cannot use
        name = self._ann_meta.get("file")
        if name:
            path = self.folder / str(name)
            try:
                index = faiss.read_index(str(path), _MMAP_FLAG)
            except RuntimeError as exc:
                raise StoreError(
                    f"cannot read the index {path}: {exc}. The raw vectors are intact: "
                    "edit meta.json to drop its 'ann' entry, then reindex."
                ) from exc
            if index.d != self.dim:
                raise StoreError(f"the index {path} has dim {index.d}, not {self.dim}")
            self._ann = index
            self._ann_mapped = _MMAP_FLAG != 0
        changed = meta.get("changed")
        if changed:
            path = self.folder / str(changed)
            try:
                ids = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise StoreError(f"cannot read {path}: {exc}") from exc
            self._changed = set(np.asarray(ids, dtype=np.int64).tolist())
            self._changed_file = str(changed)

    def _read_snapshot(self, name: str) -> tuple[faiss.IndexIDMap2, int]:
        """Open the snapshot ``name`` memory-mapped (read-only); with its size in bytes."""
        path = self.folder / name
        try:
            index = faiss.read_index(str(path), _MMAP_FLAG)
        except RuntimeError as exc:  # FAISS reports a missing or broken file this way
            raise StoreError(f"cannot read the snapshot {path}: {exc}") from exc
        if not isinstance(index, faiss.IndexIDMap2) or index.d != self.dim:
            raise StoreError(
                f"the snapshot {path} is a {type(index).__name__} of dim {index.d}, "
                f"not an IndexIDMap2 of dim {self.dim}"
            )
        return index, path.stat().st_size

    def _remove_leftovers(self) -> None:
        """Delete what a crash during a flush can leave: temp files and old snapshots."""
        keep = {self._snapshot_name, self._changed_file}
        if self._ann_meta is not None:
            keep.add(self._ann_meta.get("file"))
        for path in self.folder.iterdir():
            name = path.name
            if name.endswith(".tmp") or (
                (_SNAPSHOT_NAME.match(name) or _ANN_NAME.match(name) or _CHANGED_NAME.match(name))
                and name not in keep
            ):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    # ------------------------------------------------------------------ the log

    def _replay(self, *, repair: bool) -> None:
        """Apply the log records after ``_wal_end`` that belong to this generation.

        Records of older generations are already in the snapshot (a crash hit between
        the new meta and the log reset): skipped. With ``repair`` (lock held exclusively)
        a bad tail is cut off; without it, it may be a record being written right now.
        """
        size = os.fstat(self._wal_fd).st_size
        offset = self._wal_end
        stale = current = False
        bad: _Bad | None = None
        # Records are coalesced (each id keeps its last write; None = deleted) and applied
        # together: one remove_ids per run instead of one O(ntotal) pass per record.
        pending: dict[int, npt.NDArray[np.float32] | None] = {}
        while offset < size:
            record = self._read_record(offset, size)
            if isinstance(record, _Bad):
                bad = record
                break
            if record.generation > self._generation:
                raise StoreError(
                    f"{self.folder / _WAL} holds records of generation {record.generation} "
                    f"but {self.folder / _META} says {self._generation}: the meta file was "
                    "replaced by an older copy. Move the folder away and re-index."
                )
            if record.generation < self._generation:
                stale = True
            else:
                current = True
                if record.vectors is not None:
                    pending.update(zip(record.ids.tolist(), record.vectors, strict=True))
                else:
                    pending.update(dict.fromkeys(record.ids.tolist()))
                if len(pending) >= 1 << 16:
                    self._apply_coalesced(pending)
                    pending = {}
            offset += record.size
        self._apply_coalesced(pending)
        self._wal_end = offset
        if not repair:
            return
        if bad is not None:
            self._cut_tail(offset, size, bad)
        if stale and not current:
            self._truncate_wal(0)
        elif stale:
            self._snapshot()

    def _read_record(self, offset: int, size: int) -> _Record | _Bad:
        if size - offset < _HEADER.size:
            return _Bad(True, "log ends inside a record header")
        head = _pread(self._wal_fd, _HEADER.size, offset)
        if len(head) < _HEADER.size:
            return _Bad(True, "log ends inside a record header")
        magic, op, generation, n, dim, length, crc = _HEADER.unpack(head)
        if magic != _MAGIC or op not in (_OP_UPSERT, _OP_DELETE):
            return _Bad(False, "bad record magic")
        expected = 8 * n + (4 * n * dim if op == _OP_UPSERT else 0)
        if length != expected:
            return _Bad(False, "record length disagrees with its header")
        if offset + _HEADER.size + length > size:
            return _Bad(True, "log ends inside a record")
        payload = _pread(self._wal_fd, length, offset + _HEADER.size)
        if len(payload) < length:
            return _Bad(True, "log ends inside a record")
        if zlib.crc32(payload, zlib.crc32(head[:_CRC_AT])) != crc:
            return _Bad(False, "record checksum mismatch")
        if dim != self.dim:
            raise StoreError(f"{self.folder / _WAL} holds vectors of dim {dim}, not {self.dim}")
        ids = np.frombuffer(payload, dtype="<i8", count=n).astype(np.int64, copy=False)
        vectors = None
        if op == _OP_UPSERT:
            vectors = np.frombuffer(payload, dtype="<f4", offset=8 * n).reshape(n, dim)
            vectors = vectors.astype(np.float32, copy=False)
        return _Record(op, generation, ids, vectors, _HEADER.size + length)

    def _cut_tail(self, offset: int, size: int, bad: _Bad) -> None:
        wal = self.folder / _WAL
        if bad.torn:
            # The expected result of a crash mid-append: that call never returned.
            log.warning("%s: dropping %d bytes of a torn last record", wal, size - offset)
        else:
            # Not a plain torn append: keep the bytes for inspection before cutting.
            keep = wal.with_name(f"wal.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{offset}")
            with contextlib.suppress(OSError):
                keep.write_bytes(_pread(self._wal_fd, size - offset, offset))
            log.error(
                "%s: %s at byte %d; replay stopped there, %d bytes set aside in %s",
                wal,
                bad.reason,
                offset,
                size - offset,
                keep.name,
            )
        self._truncate_wal(offset)

    def _truncate_wal(self, length: int) -> None:
        try:
            os.ftruncate(self._wal_fd, length)
            if self.durable:
                os.fsync(self._wal_fd)
        except OSError as exc:
            raise StoreError(f"could not truncate {self.folder / _WAL}: {exc}") from exc
        self._wal_end = length

    def _append(self, op: int, ids: npt.NDArray[np.int64], vectors: Any) -> None:
        """Append one record and sync it; on failure, cut the file back and raise."""
        id_bytes = ids.astype("<i8", copy=False).tobytes()
        vec_bytes = b"" if vectors is None else vectors.astype("<f4", copy=False).tobytes()
        head = _HEADER.pack(
            _MAGIC, op, self._generation, ids.size, self.dim, len(id_bytes) + len(vec_bytes), 0
        )[:_CRC_AT]
        crc = zlib.crc32(vec_bytes, zlib.crc32(id_bytes, zlib.crc32(head)))
        record = b"".join((head, _CRC.pack(crc), id_bytes, vec_bytes))
        start = self._wal_end
        try:
            _pwrite(self._wal_fd, record, start)
            if self.durable:
                os.fdatasync(self._wal_fd)
        except OSError as exc:
            # Cut the partial record off so later appends do not land after garbage.
            try:
                os.ftruncate(self._wal_fd, start)
            except OSError:
                self._invalid = True
            raise StoreError(
                f"could not write to {self.folder / _WAL}: {exc}; nothing was stored"
            ) from exc
        self._wal_end = start + len(record)

    # ------------------------------------------------------------------ snapshots

    def _maybe_compact(self) -> None:
        if self._wal_end > max(self._wal_limit, self._snapshot_bytes):
            self._snapshot()

    def _snapshot(self) -> None:
        """Write generation g+1 = the current state, and reset the log.

        Steps, and what a crash after each leaves:

        1. ``index.<g+1>.faiss`` written via a temp file, synced, renamed. Meta still
           names snapshot g, so opening uses snapshot g + the log; the new file is a
           leftover that opening deletes.
        2. ``meta.json`` replaced (temp file, sync, rename): the commit point. Opening
           now uses snapshot g+1 and skips the log's generation-g records, which it
           already holds.
        3. The log is truncated; later records carry generation g+1.
        4. Snapshot g is deleted (a leftover otherwise).

        Replay is idempotent besides (each id ends at its last write), so even a
        mistaken double replay would neither lose nor duplicate a vector.

        With an approximate index, the ids changed since its build are saved beside
        the snapshot (``changed.<g+1>.npy``, written like it before step 2), because the
        log that named them is reset in step 3.

        In memory, the new file becomes the base (mapped) between steps 2 and 3 and the
        overlay is emptied; the old base is unmapped then. Should that fail, the disk is
        already committed: memory is marked stale and reloaded from it at the next call.
        """
        generation = self._generation + 1
        name = f"index.{generation}.faiss"
        size = self._write_snapshot_file(name)
        changed = None
        if self._ann is not None and self._changed:
            changed = f"changed.{generation}.npy"
            self._write_changed_file(changed)
        self._write_meta(
            self._meta(
                generation=generation,
                snapshot=name,
                count=len(self._members),
                ann=self._ann_meta,
                changed=changed,
            )
        )
        old = self._snapshot_name
        old_changed = self._changed_file
        try:
            self._generation = generation
            self._snapshot_name = name
            self._snapshot_bytes = size
            self._changed_file = changed
            self._meta_sig = self._stat_meta()
            self._map_new_base(name)
            self._reset_wal()
        except BaseException:
            self._invalid = True
            raise
        if old is not None:
            self._remove_snapshot(old)
        if old_changed is not None:
            self._remove_snapshot(old_changed)

    def _map_new_base(self, name: str) -> None:
        """Make the just-written snapshot ``name`` the base, with an empty overlay."""
        base, _ = self._read_snapshot(name)
        if int(base.ntotal) != len(self._members):
            raise StoreError(
                f"the snapshot {self.folder / name} holds {base.ntotal} vectors, "
                f"not the {len(self._members)} written to it"
            )
        self._set_base(base, mapped=_MMAP_FLAG != 0)

    def _write_snapshot_file(self, name: str) -> int:
        """Write the current vectors (base minus superseded, then overlay) to ``name``."""
        return self._write_file(name, self._stream_snapshot)

    def _stream_snapshot(self, path: Path) -> None:
        """Write the current vectors to ``path`` as ``faiss.write_index`` would write an
        ``IndexIDMap2(Flat)`` holding them, chunk by chunk: the base's rows are read from
        the mapping and never gathered into one array, so compaction holds no second
        copy of the store in memory.
        """
        base_ids, keep, overlay_ids = self._live_ids()
        if keep is not None:
            base_ids = base_ids[keep]
        overlay = self._overlay_index()
        n = int(base_ids.size + overlay_ids.size)
        codes = self._codes(self._loaded())
        rows = max(1, _COPY_BYTES // (4 * self.dim))
        with path.open("wb") as handle:
            handle.write(_snapshot_prefix(self.dim, n, self.metric))
            for lo in range(0, codes.shape[0], rows):
                block = codes[lo : lo + rows]
                _write_array(handle, block if keep is None else block[keep[lo : lo + rows]])
            _write_array(handle, self._codes(overlay))
            handle.write(struct.pack("=Q", n))  # the id map: its length, then the ids
            _write_array(handle, base_ids)
            _write_array(handle, overlay_ids)

    def _write_index_file(self, index: faiss.Index, name: str) -> int:
        """Write ``index`` to ``name`` atomically (temp file, sync, rename, sync folder)."""
        return self._write_file(name, lambda tmp: faiss.write_index(index, str(tmp)))

    def _write_file(self, name: str, write: Callable[[Path], None]) -> int:
        """Have ``write`` fill a temp file, sync it and rename it to ``name``; its size."""
        final = self.folder / name
        tmp = final.with_name(name + ".tmp")
        try:
            write(tmp)
            if self.durable:
                _fsync_path(tmp)
            tmp.replace(final)
            self._sync_dir()
        except (OSError, RuntimeError) as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StoreError(f"could not write the snapshot {final}: {exc}") from exc
        return final.stat().st_size

    def _write_changed_file(self, name: str) -> None:
        final = self.folder / name
        tmp = final.with_name(name + ".tmp")
        ids = np.sort(np.fromiter(self._changed, dtype=np.int64, count=len(self._changed)))
        try:
            with tmp.open("wb") as handle:
                np.save(handle, ids, allow_pickle=False)
                handle.flush()
                if self.durable:
                    os.fsync(handle.fileno())
            tmp.replace(final)
            self._sync_dir()
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StoreError(f"could not write {final}: {exc}") from exc

    def _reset_wal(self) -> None:
        self._truncate_wal(0)

    def _remove_snapshot(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.folder / name).unlink()

    def _meta(
        self,
        *,
        generation: int,
        snapshot: str | None,
        count: int,
        ann: Mapping[str, Any] | None = None,
        changed: str | None = None,
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "format": FORMAT_VERSION if ann else _PLAIN_FORMAT,
            "backend": "faiss",
            "space": self.space,
            "dim": self.dim,
            "metric": self.metric,
            "index_type": INDEX_TYPE,
            "generation": generation,
            "snapshot": snapshot,
            "count": int(count),  # at snapshot time; the log may add or remove some
        }
        if ann:
            meta["ann"] = dict(ann)
            meta["changed"] = changed
        return meta

    def _write_meta(self, meta: Mapping[str, Any]) -> None:
        path = self.folder / _META
        tmp = path.with_name(_META + ".tmp")
        try:
            with tmp.open("w", encoding="utf-8") as handle:
                json.dump(meta, handle, indent=2)
                handle.write("\n")
                handle.flush()
                if self.durable:
                    os.fsync(handle.fileno())
            tmp.replace(path)
            self._sync_dir()
        except OSError as exc:
            raise StoreError(f"could not write {path}: {exc}") from exc

    # ------------------------------------------------------------------ other processes

    @contextlib.contextmanager
    def _flocked(self, mode: int) -> Iterator[None]:
        fcntl.flock(self._lock_fd, mode)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the folder's lock exclusively, caught up with every other writer."""
        self._ensure_open()
        with self._flocked(fcntl.LOCK_EX):
            self._catch_up(repair=True)
            yield

    def _ready_for_read(self) -> None:
        self._ensure_open()
        # Two stat calls when nothing changed; the shared lock only when something did.
        if self._stat_meta() != self._meta_sig or self._wal_size() != self._wal_end:
            with self._flocked(fcntl.LOCK_SH):
                self._catch_up(repair=False)

    def _catch_up(self, *, repair: bool) -> None:
        try:
            if self._stat_meta() != self._meta_sig or self._wal_size() < self._wal_end:
                self._load(repair=repair)  # another process took a snapshot
            elif self._wal_size() != self._wal_end:
                self._replay(repair=repair)
        except BaseException:
            self._invalid = True  # half-applied: start from the disk again next time
            raise

    def _stat_meta(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._meta_path)  # noqa: PTH116 - a str path: no Path objects per call
        except FileNotFoundError:
            return None
        # meta.json is only ever replaced by a new file, so its inode changes each time.
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _wal_size(self) -> int:
        return os.fstat(self._wal_fd).st_size

    def _sync_dir(self, folder: Path | None = None) -> None:
        if not self.durable:
            return
        fd = os.open(folder or self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ in memory

    def _new_flat(self) -> faiss.IndexFlat:
        if self.metric == "ip":
            return faiss.IndexFlatIP(self.dim)
        return faiss.IndexFlatL2(self.dim)

    def _guarded(self, apply: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Apply a logged change in memory; if that fails, reload from disk next time."""
        try:
            return apply(*args, **kwargs)
        except BaseException:
            self._invalid = True
            raise

    def _apply_upsert(self, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> None:
        """Put ``vectors`` in the overlay; a stored id's older vector is removed from the
        overlay, or, when it is in the base, hidden there (the base is never changed)."""
        overlay = self._overlay_index()
        members, in_overlay = self._members, self._overlay_ids
        id_list = ids.tolist()
        again = [i for i in id_list if i in in_overlay]
        hidden = [i for i in id_list if i in members and i not in in_overlay]
        if again:
            overlay.remove_ids(faiss.IDSelectorBatch(np.array(again, dtype=np.int64)))
        overlay.add_with_ids(vectors, ids)
        in_overlay.update(id_list)
        members.update(id_list)
        if hidden:
            self._supersede(hidden)
        self._note_changed(ids)

    def _note_changed(self, ids: npt.NDArray[np.int64]) -> None:
        # Only ids the approximate index may hold stale: nothing to track without one.
        if self._ann is not None:
            self._changed.update(ids.tolist())
            self._delta = None

    def _apply_coalesced(self, changes: Mapping[int, npt.NDArray[np.float32] | None]) -> None:
        if not changes:
            return
        self._apply_delete(np.fromiter(changes.keys(), dtype=np.int64, count=len(changes)))
        upserts = [(i, v) for i, v in changes.items() if v is not None]
        if upserts:
            ids = np.fromiter((i for i, _ in upserts), dtype=np.int64, count=len(upserts))
            self._apply_upsert(ids, np.stack([v for _, v in upserts]))

    def _apply_delete(self, ids: npt.NDArray[np.int64]) -> int:
        """Remove stored ``ids``: from the overlay, or hidden in the base."""
        present = self._present(ids)
        if present.size:
            id_list = present.tolist()
            in_overlay = self._overlay_ids
            from_overlay = [i for i in id_list if i in in_overlay]
            from_base = [i for i in id_list if i not in in_overlay]
            if from_overlay:
                # An overwritten base id is superseded already: its base copy stays hidden.
                selector = faiss.IDSelectorBatch(np.array(from_overlay, dtype=np.int64))
                self._overlay_index().remove_ids(selector)
                in_overlay.difference_update(from_overlay)
            self._members.difference_update(id_list)
            if from_base:
                self._supersede(from_base)
            self._note_changed(present)
        return int(present.size)

    def _supersede(self, ids: list[int]) -> None:
        """Hide base ``ids`` (deleted or overwritten) from every read of the base."""
        self._superseded.update(ids)
        self._base_params = None

    def _superseded_array(self) -> npt.NDArray[np.int64]:
        return np.fromiter(self._superseded, dtype=np.int64, count=len(self._superseded))

    def _in_overlay(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Which of ``ids`` have their current vector in the overlay."""
        in_overlay = self._overlay_ids
        if not in_overlay:
            return np.zeros(ids.size, dtype=bool)
        return np.fromiter((i in in_overlay for i in ids.tolist()), dtype=bool, count=ids.size)

    def _present(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        members = self._members
        return np.fromiter((i for i in ids.tolist() if i in members), dtype=np.int64)

    def _id_array(self, ids: npt.ArrayLike) -> npt.NDArray[np.int64]:
        arr = np.asarray(ids)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.ndim != 1:
            raise ValueError(f"ids must be one-dimensional, got shape {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"ids must be integers, got {arr.dtype}")
        out = np.ascontiguousarray(arr, dtype=np.int64)
        if out.size and (out == -1).any():
            raise ValueError("-1 cannot be an id: FAISS uses it to mean 'no result'")
        return out

    def _vector_array(self, values: npt.ArrayLike, what: str) -> npt.NDArray[np.float32]:
        return check_vectors(values, self.dim, self.space, what)


_new_tuple = tuple.__new__


def _hit_lists(
    labels: npt.NDArray[np.int64], distances: npt.NDArray[np.float32], k: int
) -> list[list[SearchHit]]:
    """One list of at most ``k`` hits per query row, without FAISS's -1 fillers."""
    out: list[list[SearchHit]] = []
    for li, di in zip(labels.tolist(), distances.tolist(), strict=True):
        if -1 in li or len(li) > k:
            out.append([SearchHit(i, d) for i, d in zip(li, di, strict=True) if i != -1][:k])
        else:
            # tuple.__new__ straight from the pairs: a NamedTuple's own __new__ is Python.
            out.append([_new_tuple(SearchHit, pair) for pair in zip(li, di, strict=True)])
    return out


def _merge_top(
    labels: npt.NDArray[np.int64],
    distances: npt.NDArray[np.float32],
    more_labels: npt.NDArray[np.int64],
    more_distances: npt.NDArray[np.float32],
    k: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The best ``k`` per row of two hit lists (scores: higher is closer; -1: no hit)."""
    labels = np.concatenate([labels, more_labels], axis=1)
    distances = np.concatenate([distances, more_distances], axis=1)
    distances[labels == -1] = -np.inf
    order = np.argsort(-distances, axis=1, kind="stable")[:, :k]
    rows = np.arange(labels.shape[0])[:, None]
    return labels[rows, order], distances[rows, order]


def _snapshot_prefix(dim: int, n: int, metric: str) -> bytes:
    """What ``faiss.write_index`` writes before the vectors of an ``IndexIDMap2`` over an
    ``IndexFlatIP`` (``IndexFlatL2``) of ``n`` vectors: the two index headers and the
    length of the flat codes in floats. The vectors and the id map follow.
    """
    # The two int64 fields after ntotal are unused; FAISS always writes 1 << 20.
    header = _INDEX_HEADER.pack(dim, n, 1 << 20, 1 << 20, True, _METRICS[metric])
    flat = b"IxFI" if metric == "ip" else b"IxF2"
    return b"IxM2" + header + flat + header + struct.pack("=Q", n * dim)


def _write_array(handle: BinaryIO, array: npt.NDArray[Any]) -> None:
    """Write the bytes of a C-contiguous ``array`` (native byte order, as FAISS does)."""
    handle.write(np.ascontiguousarray(array).data)


def _pread(fd: int, length: int, offset: int) -> bytes:
    parts: list[bytes] = []
    while length > 0:
        chunk = os.pread(fd, min(length, 1 << 30), offset)
        if not chunk:
            break
        parts.append(chunk)
        length -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _pwrite(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
