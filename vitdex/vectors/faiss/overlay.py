"""The raw vectors of a FAISS store in memory: the mapped snapshot plus an overlay.

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
minus the superseded ids, then the overlay (:meth:`RawVectors.live_rows`), and the new
file becomes the base with an empty overlay: compaction never holds a second full copy
of the vectors. Resident memory is therefore the overlay, bounded by the log, plus about
100 bytes of id bookkeeping a vector. With a FAISS too old for ``IO_FLAG_MMAP_IFC`` the
base is read into memory instead, and is still never changed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from vitdex.vectors.faiss.wal import Changes
from vitdex.vectors.store import SearchHit

__all__ = ["FAISS_ID_BYTES", "SET_ID_BYTES", "RawVectors", "hit_lists", "merge_top"]

#: Bytes of raw vectors copied per step when a snapshot is written.
_COPY_BYTES = 16 << 20
#: Estimated resident bytes per id in FAISS's id map (8) and reverse hash map (~32).
FAISS_ID_BYTES = 40
#: Estimated resident bytes per int in a Python set (table slot + int object).
SET_ID_BYTES = 64


class RawVectors:
    """The exact vectors of one store: base, overlay, superseded ids, every stored id.

    Not locked by itself: the store calls it holding its lock. ``search_threads`` caps
    FAISS's OpenMP threads during a search (``None``: FAISS's default, every core).
    """

    def __init__(self, dim: int, metric: str, search_threads: int | None) -> None:
        self.dim = dim
        self.metric = metric
        self.search_threads = search_threads
        self._base: faiss.IndexIDMap2 | None = None
        #: Whether the base is a read-only mapping of its file (else read into memory).
        self.base_mapped = False
        self._overlay: faiss.IndexIDMap2 | None = None
        self.overlay_ids: set[int] = set()
        self.superseded: set[int] = set()
        # Search parameters excluding the superseded ids from the base (None: build on
        # the next exact search) and the selectors they point to (FAISS holds raw ones).
        self._base_params: tuple[faiss.SearchParameters, Any, Any] | None = None
        #: Every stored id: O(1) membership, so a batch of new ids costs no O(n) scan,
        #: and missing ids are named without asking FAISS one by one.
        self.members: set[int] = set()
        # Bumped whenever another base is set; keys the id -> position table below.
        self._base_version = 0
        # (base version, smallest id, position of each id - smallest or -1), or a None
        # table when the ids are too sparse for one. Built by the first re-scoring search.
        self._positions: tuple[int, int, npt.NDArray[np.int64] | None] | None = None
        #: The IndexFlat inside the base, as of that table.
        self.raw_flat: Any = None

    # ------------------------------------------------------------------ state

    @property
    def base(self) -> faiss.IndexIDMap2:
        """The base: the snapshot of this generation, memory-mapped. Never mutate it:
        FAISS aborts the process on a write to a mapped index."""
        assert self._base is not None
        return self._base

    @property
    def overlay(self) -> faiss.IndexIDMap2:
        """The in-memory vectors of the ids upserted since the snapshot."""
        assert self._overlay is not None
        return self._overlay

    @property
    def loaded(self) -> bool:
        """Whether a base is set (since the last :meth:`clear`)."""
        return self._base is not None

    def load(self, base: faiss.IndexIDMap2 | None, *, mapped: bool) -> None:
        """Start from ``base`` as opened: its ids are the stored ones, the overlay empty.

        ``None``: no snapshot yet, an empty base (in memory, never mutated either).
        """
        self.set_base(faiss.IndexIDMap2(self.new_flat()) if base is None else base, mapped=mapped)
        self.members = set(self.base_ids().tolist())

    def set_base(self, base: faiss.IndexIDMap2, *, mapped: bool) -> None:
        """Use ``base`` (a snapshot of the stored vectors) from now on, with an empty
        overlay; the stored ids stay as they are."""
        # Forget everything that points into the old base before it is freed (unmapped).
        self.raw_flat = None
        self._positions = None
        self._base_params = None
        self._base = base
        self.base_mapped = mapped
        self._base_version += 1
        self._overlay = faiss.IndexIDMap2(self.new_flat())
        self.overlay_ids = set()
        self.superseded = set()

    def clear(self) -> None:
        """Forget everything (the base is unmapped once nothing else refers to it)."""
        self.raw_flat = None
        self._positions = None
        self._base_params = None
        self._base = None
        self.base_mapped = False
        self._overlay = None
        self.overlay_ids = set()
        self.superseded = set()
        self.members = set()

    def new_flat(self) -> faiss.IndexFlat:
        """An empty flat index of this dim and metric."""
        if self.metric == "ip":
            return faiss.IndexFlatIP(self.dim)
        return faiss.IndexFlatL2(self.dim)

    def has_changes(self) -> bool:
        """Whether anything was written since the base was set."""
        return bool(self.overlay_ids or self.superseded)

    def base_ids(self) -> npt.NDArray[np.int64]:
        """The base's ids in storage order (a copy)."""
        ids = faiss.vector_to_array(self.base.id_map)
        return ids.astype(np.int64, copy=False)

    def live_ids(
        self,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_] | None, npt.NDArray[np.int64]]:
        """The base's ids, which of them still hold (None: all), and the overlay's ids."""
        base_ids = self.base_ids()
        keep = ~np.isin(base_ids, self._superseded_array()) if self.superseded else None
        overlay_ids = faiss.vector_to_array(self.overlay.id_map)
        return base_ids, keep, overlay_ids.astype(np.int64, copy=False)

    def live_rows(self, keep: npt.NDArray[np.bool_] | None) -> Iterator[npt.NDArray[np.float32]]:
        """The current vectors in blocks, in the order of :meth:`live_ids`: the base's
        rows that ``keep`` keeps, read from the mapping a block at a time, then the
        overlay's."""
        codes = self.codes(self.base)
        rows = max(1, _COPY_BYTES // (4 * self.dim))
        for lo in range(0, codes.shape[0], rows):
            block = codes[lo : lo + rows]
            yield block if keep is None else block[keep[lo : lo + rows]]
        yield self.codes(self.overlay)

    def codes(self, index: faiss.IndexIDMap2) -> npt.NDArray[np.float32]:
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

    def describe(self) -> dict[str, Any]:
        """Where the raw vectors are, for ``describe()`` of the store."""
        return {
            # Where the raw vectors of the snapshot are: "mapped" or read into "memory".
            "raw_storage": "mapped" if self.base_mapped else "memory",
            "overlay_count": int(self.overlay.ntotal),
            "superseded_count": len(self.superseded),
        }

    def memory(self) -> tuple[int, int]:
        """Estimated (resident, mapped) bytes of the raw vectors and their ids."""
        raw = 4 * self.dim
        base_n = int(self.base.ntotal)
        overlay_n = int(self.overlay.ntotal)
        base_codes = base_n * raw  # superseded rows included: they stay in the file
        mapped = base_codes if self.base_mapped else 0
        resident = base_codes - mapped + base_n * FAISS_ID_BYTES
        resident += overlay_n * (raw + FAISS_ID_BYTES)
        sets = len(self.members) + len(self.overlay_ids) + len(self.superseded)
        resident += SET_ID_BYTES * sets
        table = self._positions[2] if self._positions is not None else None
        if table is not None:
            resident += table.nbytes
        return resident, mapped

    # ------------------------------------------------------------------ changes

    def upsert(self, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> None:
        """Put ``vectors`` in the overlay; a stored id's older vector is removed from the
        overlay, or, when it is in the base, hidden there (the base is never changed)."""
        overlay = self.overlay
        members, in_overlay = self.members, self.overlay_ids
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

    def delete(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Remove stored ``ids``: from the overlay, or hidden in the base. Returns those
        of ``ids`` that were stored."""
        present = self.present(ids)
        if present.size:
            id_list = present.tolist()
            in_overlay = self.overlay_ids
            from_overlay = [i for i in id_list if i in in_overlay]
            from_base = [i for i in id_list if i not in in_overlay]
            if from_overlay:
                # An overwritten base id is superseded already: its base copy stays hidden.
                selector = faiss.IDSelectorBatch(np.array(from_overlay, dtype=np.int64))
                self.overlay.remove_ids(selector)
                in_overlay.difference_update(from_overlay)
            self.members.difference_update(id_list)
            if from_base:
                self._supersede(from_base)
        return present

    def apply(self, changes: Changes) -> list[npt.NDArray[np.int64]]:
        """Apply replayed ``changes``; returns the ids that changed (deleted, then upserted)."""
        touched = [self.delete(np.fromiter(changes.keys(), dtype=np.int64, count=len(changes)))]
        upserts = [(i, v) for i, v in changes.items() if v is not None]
        if upserts:
            ids = np.fromiter((i for i, _ in upserts), dtype=np.int64, count=len(upserts))
            self.upsert(ids, np.stack([v for _, v in upserts]))
            touched.append(ids)
        return touched

    def _supersede(self, ids: list[int]) -> None:
        """Hide base ``ids`` (deleted or overwritten) from every read of the base."""
        self.superseded.update(ids)
        self._base_params = None

    def _superseded_array(self) -> npt.NDArray[np.int64]:
        return np.fromiter(self.superseded, dtype=np.int64, count=len(self.superseded))

    def in_overlay(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Which of ``ids`` have their current vector in the overlay."""
        in_overlay = self.overlay_ids
        if not in_overlay:
            return np.zeros(ids.size, dtype=bool)
        return np.fromiter((i in in_overlay for i in ids.tolist()), dtype=bool, count=ids.size)

    def present(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Those of ``ids`` that are stored, in their order."""
        members = self.members
        return np.fromiter((i for i in ids.tolist() if i in members), dtype=np.int64)

    # ------------------------------------------------------------------ reads

    def reconstruct(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """The raw vectors of stored ``ids``, each read from the overlay or the base."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not self.overlay_ids or ids.size == 0:
            return self._fetch(self.base, ids)
        in_overlay = self.in_overlay(ids)
        if in_overlay.all():
            return self._fetch(self.overlay, ids)
        if not in_overlay.any():
            return self._fetch(self.base, ids)
        out = np.empty((ids.size, self.dim), dtype=np.float32)
        out[in_overlay] = self._fetch(self.overlay, ids[in_overlay])
        out[~in_overlay] = self._fetch(self.base, ids[~in_overlay])
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

    def positions_of(
        self, ids: npt.NDArray[np.int64], smallest: int
    ) -> npt.NDArray[np.int64] | None:
        """Where base ``ids`` (the least of them: ``smallest``) sit in the base's flat
        index (:attr:`raw_flat`), or None (no table, or an id outside the base).

        A dense table over the id range, built (O(n), vectorised) on the first call after
        another base was set; the base never changes in between. Ids spread over more
        than four times their count (not SQL row ids) get no table; callers then
        reconstruct.
        """
        cached = self._positions
        if cached is None or cached[0] != self._base_version:
            id_map = self.base_ids()
            table: npt.NDArray[np.int64] | None = None
            lo = 0
            if id_map.size:
                lo, hi = int(id_map.min()), int(id_map.max())
                if hi - lo < 4 * id_map.size + 1024:
                    table = np.full(hi - lo + 1, -1, dtype=np.int64)
                    table[id_map - lo] = np.arange(id_map.size, dtype=np.int64)
            cached = self._positions = (self._base_version, lo, table)
            self.raw_flat = faiss.downcast_index(self.base.index)
        _, lo, table = cached
        if table is None or smallest < lo:
            return None
        try:  # past the table's end raises; a hole in the id range reads -1
            positions = table.take(ids - lo)
        except IndexError:
            return None
        return positions if positions.min() >= 0 else None

    def search(
        self, q: npt.NDArray[np.float32], k: int, allowed: npt.NDArray[np.int64] | None
    ) -> list[list[SearchHit]]:
        """Exact top ``k`` over base and overlay; ``allowed`` holds stored ids only."""
        base, overlay = self.base, self.overlay
        parts: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]] = []
        if allowed is None:
            base_live = int(base.ntotal) - len(self.superseded)
            if base_live > 0:
                params = self._base_exclusion()
                parts.append(self.faiss_search(base, q, min(k, base_live), params))
            if overlay.ntotal:
                parts.append(self.faiss_search(overlay, q, min(k, int(overlay.ntotal)), None))
        else:
            # A stored id not in the overlay is a base id that was not superseded: each
            # side searches only its own share of the allowed ids.
            in_overlay = self.in_overlay(allowed)
            for index, chosen in ((base, allowed[~in_overlay]), (overlay, allowed[in_overlay])):
                if chosen.size:
                    selector = faiss.IDSelectorBatch(chosen)  # referenced until searched
                    params = faiss.SearchParameters()
                    params.sel = selector
                    parts.append(self.faiss_search(index, q, min(k, int(chosen.size)), params))
        if not parts:
            return [[] for _ in range(q.shape[0])]
        distances, labels = parts[0]
        if self.metric == "l2":
            distances = -distances  # squared distance: negate so higher is closer
        for more_distances, more_labels in parts[1:]:
            if self.metric == "l2":
                more_distances = -more_distances
            labels, distances = merge_top(labels, distances, more_labels, more_distances, k)
        return hit_lists(labels, distances, k)

    def _base_exclusion(self) -> faiss.SearchParameters | None:
        """Parameters hiding the superseded ids from the base; None when there are none.

        Built once per change of the superseded set, not per search.
        """
        if not self.superseded:
            return None
        cached = self._base_params
        if cached is None:
            inner = faiss.IDSelectorBatch(self._superseded_array())
            exclude = faiss.IDSelectorNot(inner)
            params = faiss.SearchParameters()
            params.sel = exclude
            cached = self._base_params = (params, exclude, inner)
        return cached[0]

    def faiss_search(
        self,
        index: faiss.Index,
        q: npt.NDArray[np.float32],
        k: int,
        params: faiss.SearchParameters | None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """FAISS's raw (distances, labels) of ``index`` for ``q``, on the capped threads."""
        # ``q`` is C-contiguous float32 (see check_vectors): straight to the C++ search,
        # without the checks and conversions of FAISS's Python wrapper.
        n = q.shape[0]
        searcher: Any = index
        distances = np.empty((n, k), dtype=np.float32)
        labels = np.empty((n, k), dtype=np.int64)
        args = (n, faiss.swig_ptr(q), k, faiss.swig_ptr(distances), faiss.swig_ptr(labels))
        if self.search_threads is None:
            searcher.search_c(*args, params)
        else:
            # OpenMP keeps this setting per calling thread: set it, then put it back.
            before = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(self.search_threads)
            try:
                searcher.search_c(*args, params)
            finally:
                faiss.omp_set_num_threads(before)
        return distances, labels


_new_tuple = tuple.__new__


def hit_lists(
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


def merge_top(
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
