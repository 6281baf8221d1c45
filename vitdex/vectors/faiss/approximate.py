"""The approximate index a FAISS store searches with, and the ids it must not answer for.

The approximate index (HNSW, IVF: see :mod:`vitdex.vectors.faiss.ann`) is never written
to by upserts and deletes. Instead the store keeps the set of ids changed since it was
built (the ``changed`` file of the snapshot plus every id the log touches): searches
exclude those ids from the approximate results and search the ones still present
exactly, then merge. A new index file is committed, like a snapshot, by replacing
``meta.json``; a crash before that leaves the previous index (or none) in use and the new
file as a leftover that opening deletes.

An index is always built right after a snapshot, from the base alone (the overlay is
empty then), so every id it may answer for, being unchanged since, sits in the base:
compressed codes (SQ8, PQ) are re-scored exactly from the base by position. Since
nothing writes to it either, the index is read from its file memory-mapped as well
(right after a build too): HNSW's vectors and graph and IVF's lists are file pages, not
process memory.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import faiss
import numpy as np
import numpy.typing as npt

from vitdex.errors import StoreError
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
from vitdex.vectors.faiss.layout import METRICS, file_size, map_index, read_index
from vitdex.vectors.faiss.overlay import SET_ID_BYTES, RawVectors, hit_lists, merge_top
from vitdex.vectors.faiss.snapshot import (
    FORMAT_VERSION,
    INDEX_TYPE,
    PLAIN_FORMAT,
    SnapshotFiles,
)
from vitdex.vectors.store import SearchHit

__all__ = ["ApproximateIndex"]

log = logging.getLogger(__name__)


class _Delta(NamedTuple):
    changed: npt.NDArray[np.int64]  # every id changed since the build, sorted
    ids: npt.NDArray[np.int64]  # those still stored
    vectors: npt.NDArray[np.float32]  # their current raw vectors
    exclude: Any  # IDSelectorNot over ``changed``, or None when nothing changed
    keep_alive: Any  # the IDSelectorBatch the Not refers to (FAISS holds a raw pointer)
    params: dict[int, Any]  # search parameters with ``exclude``, per candidate count


class ApproximateIndex:
    """The index ``meta.json`` names for the store of ``files`` (if any), and the ids
    changed since its build. Not locked by itself: the store calls it holding its lock.

    ``rebuild_fraction``: once more than this fraction of the ids changed since the
    build, :meth:`rebuild_due` says so (each changed id costs exact work at every search).
    """

    def __init__(self, files: SnapshotFiles, rebuild_fraction: float) -> None:
        self.files = files
        self.dim = files.dim
        self.metric = files.metric
        self.rebuild_fraction = rebuild_fraction
        #: The ``ann`` entry of meta.json (None: exact search only).
        self.meta: dict[str, Any] | None = None
        #: The index itself (None also while too few vectors exist to train it).
        self.index: faiss.Index | None = None
        #: Whether the index is a read-only mapping of its file.
        self.mapped = False
        self._spec: IndexSpec | None = None
        #: The ids written or deleted since the build: the index must not answer for them.
        self.changed: set[int] = set()
        #: The ``changed.<g>.npy`` file of the current snapshot, if any.
        self.changed_file: str | None = None
        # (present changed ids, their raw vectors, selector excluding every changed id),
        # rebuilt on the first search after a write.
        self._delta: _Delta | None = None

    def clear(self) -> None:
        """Forget the index and the changed ids (before loading them again)."""
        self.meta = None
        self.index = None
        self.mapped = False
        self._spec = None
        self.changed = set()
        self.changed_file = None
        self._delta = None

    def load(self, meta: Mapping[str, Any]) -> None:
        """Read the approximate index and changed ids that ``meta`` names.

        Read with the raw snapshot, rather than at the first search: under the folder
        lock, so another process cannot replace the files half-way.
        """
        self.clear()
        ann = meta.get("ann")
        self.meta = dict(ann) if isinstance(ann, Mapping) else None
        if self.meta is None:
            return
        parse_index_spec(str(self.meta.get("spec")))  # refuse a spec we cannot use
        name = self.meta.get("file")
        if name:
            path = self.files.folder / str(name)
            try:
                index, mapped = read_index(path)
            except RuntimeError as exc:
                raise StoreError(
                    f"cannot read the index {path}: {exc}. The raw vectors are intact: "
                    "edit meta.json to drop its 'ann' entry, then reindex."
                ) from exc
            if index.d != self.dim:
                raise StoreError(f"the index {path} has dim {index.d}, not {self.dim}")
            self.index = index
            self.mapped = mapped
        changed = meta.get("changed")
        if changed:
            self.changed = set(self.files.read_changed(str(changed)).tolist())
            self.changed_file = str(changed)

    def file_names(self) -> set[str | None]:
        """The files in use: the index's and the current changed ids'."""
        return {self.meta.get("file") if self.meta else None, self.changed_file}

    def note_changed(self, ids: npt.NDArray[np.int64]) -> None:
        """Remember that ``ids`` were written or deleted (only while an index is in use)."""
        if self.index is not None:
            self.changed.update(ids.tolist())
            self._delta = None

    def save_changed(self, generation: int) -> str | None:
        """Save the changed ids beside snapshot ``generation``; the file's name, or None
        when there is nothing to save."""
        if self.index is None or not self.changed:
            return None
        name = f"changed.{generation}.npy"
        ids = np.sort(np.fromiter(self.changed, dtype=np.int64, count=len(self.changed)))
        self.files.write_changed(name, ids)
        return name

    def rebuild_due(self, n: int) -> bool:
        """Whether the next flush should build the index: the first time once ``n``
        vectors suffice to train it, then once too many ids changed since its build."""
        meta = self.meta
        if meta is None:
            return False
        if meta.get("file") is None:
            spec = parse_index_spec(str(meta["spec"]))
            return training_shortfall(spec, n, self.dim) is None
        return len(self.changed) > self.rebuild_fraction * max(n, 1)

    def describe(self, count: int) -> dict[str, Any]:
        """The index in use, how it was built, what changed since, for ``describe()``
        of a store of ``count`` vectors."""
        ann = self.meta or {}
        index = self.index
        per_vector = code_bytes_per_vector(index) if index is not None else 0.0
        spec = parse_index_spec(str(ann["spec"])) if ann else IndexSpec()
        ann_file = ann.get("file")
        return {
            # The index searches use, in faiss.index_factory terms.
            "index_type": ann.get("factory") or INDEX_TYPE,
            "index_spec": with_nlist(spec, int(ann.get("built_count", count))).canonical(),
            "raw_index_type": INDEX_TYPE,
            "exact": index is None,
            # False while an IVF spec waits for enough vectors (exact fallback).
            "trained": bool(index.is_trained) if index is not None else not ann,
            "fallback": ann.get("fallback"),
            "format": FORMAT_VERSION if ann else PLAIN_FORMAT,
            "index_build": ann.get("build"),
            "changed_since_build": len(self.changed),
            "rebuild_due": self.rebuild_due(count),
            "index_bytes": file_size(self.files.folder / str(ann_file)) if ann_file else 0,
            "index_storage": None if index is None else "mapped" if self.mapped else "memory",
            # Index codes over raw float32: 1.0 for HNSW/IVF-Flat, 0.25 for SQ8...
            "index_code_ratio": per_vector / (4 * self.dim) if per_vector else None,
        }

    def changed_bytes(self) -> int:
        """The size of the current changed-ids file."""
        name = self.changed_file
        return file_size(self.files.folder / name) if name else 0

    def memory(self) -> tuple[int, int]:
        """Estimated (resident, mapped) bytes of the index and the changed ids."""
        resident = SET_ID_BYTES * len(self.changed)
        mapped = 0
        delta = self._delta
        if delta is not None:  # the changed ids' vectors, copied for exact search
            resident += delta.changed.nbytes + delta.ids.nbytes + delta.vectors.nbytes
        if self.index is not None:
            ann_bytes = round(code_bytes_per_vector(self.index) * int(self.index.ntotal))
            if self.mapped:
                mapped += ann_bytes
            else:
                resident += ann_bytes
        return resident, mapped

    # ------------------------------------------------------------------ building

    def build(
        self,
        spec: IndexSpec,
        raw: RawVectors,
        *,
        generation: int,
        snapshot: str | None,
        progress: Callable[[str, float], None] | None,
    ) -> dict[str, Any]:
        """Build the index of ``spec`` from the base of ``raw`` (overlay empty), save it
        and commit it to ``meta.json`` beside ``snapshot`` of ``generation``."""
        files = self.files
        base = raw.base
        n = int(base.ntotal)
        started = time.perf_counter()
        index: faiss.Index | None = None
        fallback = training_shortfall(spec, n, self.dim)
        if fallback is not None:
            log.warning("%s: %s", files.folder, fallback)
        build = int(self.meta.get("build", 0)) + 1 if self.meta else 1
        name: str | None = None
        size = 0
        if not spec.exact and fallback is None:
            ids = raw.base_ids()
            # A view of the mapped base: no second copy of the vectors while building.
            vectors = raw.codes(base)
            try:
                index = build_index(spec, ids, vectors, METRICS[self.metric], progress)
            except RuntimeError as exc:
                raise StoreError(f"could not build {spec.canonical()}: {exc}") from exc
            name = f"ann.{build}.{spec.tag}.faiss"
            size = files.write_index(index, name)
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
        old_file = self.meta.get("file") if self.meta else None
        old_changed = self.changed_file
        # The commit point: until meta.json names the new file, the old index is in use.
        files.write_meta(
            files.meta(generation=generation, snapshot=snapshot, count=n, ann=ann_meta)
        )
        self.clear()
        self.meta = ann_meta
        self.index = index
        if name:
            # Serve from the file just committed, mapped, and let the built copy go.
            with contextlib.suppress(RuntimeError):
                mapped = map_index(files.folder / name)
                if mapped is not None:
                    self.index, self.mapped = mapped, True
        for leftover in (old_file, old_changed):
            if leftover and leftover != name:
                files.remove(str(leftover))
        return {
            "spec": spec.canonical(),
            "index_type": ann_meta["factory"] if ann_meta and ann_meta["factory"] else INDEX_TYPE,
            "count": n,
            "build_seconds": seconds,
            "index_bytes": size,
            "fallback": fallback,
        }

    # ------------------------------------------------------------------ searching

    def search(
        self,
        q: npt.NDArray[np.float32],
        k: int,
        allowed: npt.NDArray[np.int64] | None,
        ntotal: int,
        raw: RawVectors,
    ) -> list[list[SearchHit]]:
        """The top ``k``: the index for the ids unchanged since its build, ``raw``
        exactly for the rest, merged by score; ``allowed`` holds stored ids only."""
        ann = self.index
        assert ann is not None
        spec = self._spec
        if spec is None:  # parsed once per load, not per query
            assert self.meta is not None
            spec = self._spec = parse_index_spec(str(self.meta["spec"]))
        delta = self._delta_now(raw)
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
            distances, labels = raw.faiss_search(ann, q, fetch, params)
            if rescore:
                labels, distances = self._rescore(q, labels, k, raw)
            elif self.metric == "l2":
                distances = -distances
        else:
            labels = np.full((q.shape[0], 0), -1, dtype=np.int64)
            distances = np.zeros((q.shape[0], 0), dtype=np.float32)
        if delta_ids.size:
            labels, distances = self._merge_exact(q, labels, distances, delta_ids, delta_vecs, k)
        hits = hit_lists(labels, distances, k)
        # A walk cut short by the selector can return fewer hits than exist: answer those
        # queries exactly rather than return a short list.
        short = [r for r, row in enumerate(hits) if len(row) < k]
        if short:
            redo = raw.search(q[short], k, allowed)
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
        return merge_top(labels, distances, exact_ids, exact, k)

    def _rescore(
        self, q: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], k: int, raw: RawVectors
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
            return self._rescore_masked(q, labels, k, raw)
        positions = raw.positions_of(flat_ids, smallest)
        if positions is not None:
            # What IndexRefineFlat does: exact distances read in place, no vector copied.
            exact = np.empty((nq, fetch), dtype=np.float32)
            ptr = faiss.swig_ptr
            raw.raw_flat.compute_distance_subset(nq, ptr(q), fetch, ptr(exact), ptr(positions))
            if self.metric == "l2":
                exact = -exact
            if nq == 1:
                order1 = np.argsort(-exact[0], kind="stable")[:k]
                return flat_ids[order1][None, :], exact[0, order1][None, :]
            order0 = np.argsort(-exact, axis=1, kind="stable")[:, :k]
            rows0 = np.arange(nq)[:, None]
            return labels[rows0, order0], exact[rows0, order0]
        vecs = raw.reconstruct(flat_ids)
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
        self, q: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], k: int, raw: RawVectors
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        found = labels != -1
        flat_ids = labels[found]
        scores = np.full(labels.shape, -np.inf, dtype=np.float32)
        if flat_ids.size:
            vecs = raw.reconstruct(flat_ids)
            rows = np.nonzero(found)[0]
            if self.metric == "ip":
                exact = np.einsum("ij,ij->i", q[rows], vecs)
            else:
                exact = -np.sum((q[rows] - vecs) ** 2, axis=1)
            scores[found] = exact
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        rows2 = np.arange(labels.shape[0])[:, None]
        return labels[rows2, order], scores[rows2, order]

    def _scores(
        self, q: npt.NDArray[np.float32], vecs: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """Exact similarity of every query to every vector (higher is closer)."""
        if self.metric == "ip":
            return np.asarray(q @ vecs.T, dtype=np.float32)
        sq = (q * q).sum(1)[:, None] - 2 * (q @ vecs.T) + (vecs * vecs).sum(1)[None, :]
        return np.asarray(-sq, dtype=np.float32)

    def _delta_now(self, raw: RawVectors) -> _Delta:
        """The changed ids still present with their vectors, and a selector for all."""
        delta = self._delta
        if delta is None:
            if not self.changed:  # nothing changed since the build: nothing to exclude
                empty = np.empty(0, dtype=np.int64)
                delta = _Delta(empty, empty, np.empty((0, self.dim), np.float32), None, None, {})
            else:
                changed = np.fromiter(self.changed, dtype=np.int64, count=len(self.changed))
                changed.sort()
                present = raw.present(changed)
                vectors = (
                    raw.reconstruct(present)
                    if present.size
                    else np.empty((0, self.dim), dtype=np.float32)
                )
                inner = faiss.IDSelectorBatch(changed)
                delta = _Delta(changed, present, vectors, faiss.IDSelectorNot(inner), inner, {})
            self._delta = delta
        return delta
