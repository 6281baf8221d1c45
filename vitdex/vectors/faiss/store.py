"""The embedded default vector store: FAISS search, every write durable on return.

:class:`FaissStore` implements the :class:`~vitdex.vectors.store.VectorStore` contract
over one folder per space (see :mod:`~vitdex.vectors.faiss.layout` for its files) and
composes the parts that each own one concern:

- :mod:`~vitdex.vectors.faiss.wal`: the write-ahead log, which makes each write durable;
- :mod:`~vitdex.vectors.faiss.snapshot`: ``meta.json`` and the snapshot it names, and
  why a crash at any step of a flush loses and duplicates nothing;
- :mod:`~vitdex.vectors.faiss.overlay`: the raw vectors in memory, a mapped snapshot
  plus the changes since, searched exactly;
- :mod:`~vitdex.vectors.faiss.approximate` (over :mod:`~vitdex.vectors.faiss.ann`): the
  optional approximate index and the ids it must not answer for;
- :mod:`~vitdex.vectors.faiss.locking`: how several processes share one folder.

The facade orders their steps: opening maps the snapshot and replays the log of its
generation; a write appends to the log, then changes memory; a flush writes the next
snapshot, commits it, maps it and resets the log. A failure half-way through changing
memory marks the store stale, and the next call reloads it from the disk.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from vitdex.errors import StoreError
from vitdex.vectors.faiss.ann import IndexSpec, parse_index_spec
from vitdex.vectors.faiss.approximate import ApproximateIndex
from vitdex.vectors.faiss.layout import META, METRICS, file_size
from vitdex.vectors.faiss.locking import EXCLUSIVE, SHARED, FolderLock
from vitdex.vectors.faiss.overlay import FAISS_ID_BYTES, SET_ID_BYTES, RawVectors
from vitdex.vectors.faiss.snapshot import SnapshotFiles
from vitdex.vectors.faiss.wal import OP_DELETE, OP_UPSERT, AppendError, Changes, WriteAheadLog
from vitdex.vectors.store import (
    ClosingStore,
    SearchHit,
    VectorNotFoundError,
    check_batch,
    check_ids,
    check_vectors,
)

__all__ = ["FaissStore"]


class FaissStore(ClosingStore):
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

    #: Filters allowing at most this fraction of the store are searched exactly.
    exact_filter_fraction = 0.05

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
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
        if search_threads is not None and search_threads < 1:
            raise ValueError(f"search_threads must be at least 1, got {search_threads}")
        self.folder = Path(folder)
        self.space = space
        self.dim = int(dim)
        self.metric = metric
        self.durable = durable
        self._wal_limit = int(wal_limit_bytes)
        self._lock = threading.RLock()
        self._closed = False
        # Set when memory may no longer match the disk (a failed write): reload before use.
        self._invalid = False
        self._pid = -1
        self._folder_lock = FolderLock(self.folder)
        self._wal = WriteAheadLog(self.folder, self.dim, durable=durable)
        self._files = SnapshotFiles(self.folder, space, self.dim, metric, durable=durable)
        self._raw = RawVectors(self.dim, metric, search_threads)
        self._approx = ApproximateIndex(self._files, float(rebuild_fraction))
        # The snapshot in use: its generation, file name and size, and the signature of
        # the meta.json that named it (another one means another process committed).
        self._generation = 0
        self._snapshot_name: str | None = None
        self._snapshot_bytes = 0
        self._meta_sig: tuple[int, int, int] | None = None

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
        id_arr, vecs, _ = check_batch(self._id_array(ids), vectors, payloads, self.dim, self.space)
        if id_arr.size == 0:
            return
        with self._lock, self._writing():
            self._append(OP_UPSERT, id_arr, vecs)
            with self._stale_on_failure():
                self._raw.upsert(id_arr, vecs)
                self._approx.note_changed(id_arr)
            self._maybe_compact()

    def delete(self, ids: npt.ArrayLike) -> int:
        """Remove the vectors of ``ids``; returns how many of them were stored."""
        id_arr = np.unique(self._id_array(ids))
        if id_arr.size == 0:
            return 0
        with self._lock, self._writing():
            present = self._raw.present(id_arr)
            if present.size == 0:
                return 0
            self._append(OP_DELETE, present, None)
            with self._stale_on_failure():
                removed = self._raw.delete(present)
                if removed.size:
                    self._approx.note_changed(removed)
            self._maybe_compact()
            return int(removed.size)

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
        q = check_vectors(queries, self.dim, self.space, "queries")
        if k < 0:
            raise ValueError(f"k must not be negative, got {k}")
        allowed = None if allowed_ids is None else np.unique(self._id_array(allowed_ids))
        with self._lock:
            self._ready_for_read()
            ntotal = len(self._raw.members)
            if allowed is not None:
                allowed = self._raw.present(allowed)
            limit = ntotal if allowed is None else int(allowed.size)
            k_eff = min(int(k), limit)
            if k_eff == 0 or q.shape[0] == 0:
                return [[] for _ in range(q.shape[0])]
            if self._approx.index is not None and (
                allowed is None or allowed.size > self.exact_filter_fraction * ntotal
            ):
                return self._approx.search(q, k_eff, allowed, ntotal, self._raw)
            return self._raw.search(q, k_eff, allowed)

    def get(self, ids: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """The stored vectors of ``ids`` [n, dim], bit-identical, in the order asked.

        Raises :class:`VectorNotFoundError` (a ``KeyError``) naming the missing ids.
        """
        id_arr = self._id_array(ids)
        with self._lock:
            self._ready_for_read()
            members = self._raw.members
            missing = [i for i in id_arr.tolist() if i not in members]
            if missing:
                raise VectorNotFoundError(self.space, missing)
            return self._raw.reconstruct(id_arr)

    def ids(self) -> npt.NDArray[np.int64]:
        """Every stored id, sorted."""
        with self._lock:
            self._ready_for_read()
            base_ids, keep, overlay_ids = self._raw.live_ids()
        live_base = base_ids if keep is None else base_ids[keep]
        return np.sort(np.concatenate([live_base, overlay_ids]))

    def count(self) -> int:
        """How many vectors the store holds."""
        with self._lock:
            self._ready_for_read()
            return len(self._raw.members)

    def flush(self) -> None:
        """Fold the log into a new snapshot, so that opening reads one file and no log.

        With an approximate index, also rebuild it when it is due: once enough vectors
        exist to train it, or once more than ``rebuild_fraction`` of the ids changed
        since its build (each of those costs exact work at every search).
        """
        with self._lock, self._writing():
            self._fold_log()
            if self._approx.rebuild_due(len(self._raw.members)):
                assert self._approx.meta is not None
                self._build(parse_index_spec(str(self._approx.meta["spec"])), None)

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
            self._fold_log()
            return self._build(parsed, progress)

    def close(self) -> None:
        """Release the files and the index. Writes nothing: every call was durable already.

        Any later call raises :class:`StoreError`; open a new store to continue.
        """
        with self._lock:
            self._closed = True
            self._release()

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
            count = len(self._raw.members)
            ann = self._approx.describe(count)
            raw_resident, raw_mapped = self._raw.memory()
            ann_resident, ann_mapped = self._approx.memory()
            resident, mapped = raw_resident + ann_resident, raw_mapped + ann_mapped
            # With nothing stored: what the next vector written costs (it joins the overlay).
            per_new = 4 * self.dim + FAISS_ID_BYTES + 2 * SET_ID_BYTES
            on_disk = self._snapshot_bytes + self._wal.end + file_size(self.folder / META)
            return {
                "backend": "faiss",
                "space": self.space,
                "dim": self.dim,
                "metric": self.metric,
                **ann,
                "folder": str(self.folder),
                "count": count,
                "generation": self._generation,
                "snapshot_bytes": self._snapshot_bytes,
                "wal_bytes": self._wal.end,
                "bytes_on_disk": on_disk + ann["index_bytes"] + self._approx.changed_bytes(),
                **self._raw.describe(),
                "resident_bytes": resident,
                "mapped_bytes": mapped,
                "memory_bytes_per_vector": resident / count if count else float(per_new),
                "mapped_bytes_per_vector": mapped / count if count else 0.0,
                "durable": self.durable,
            }

    def __repr__(self) -> str:
        return f"FaissStore({str(self.folder)!r}, space={self.space!r}, dim={self.dim})"

    # ------------------------------------------------------------------ opening

    def _ensure_open(self) -> None:
        """Open the files and load everything on first use (or after a fork or failure)."""
        if self._closed:
            raise StoreError(f"the vector store of space {self.space!r} is closed")
        if self._raw.loaded and not self._invalid and self._pid == os.getpid():
            return
        # A forked child shares the parent's descriptors, and with them the flock:
        # it needs its own.
        self._release()
        if not self.folder.is_dir():
            self.folder.mkdir(parents=True, exist_ok=True)
            self._files.sync(self.folder.parent)
        self._folder_lock.open()
        self._wal.open()
        self._pid = os.getpid()
        with self._folder_lock.held(EXCLUSIVE):
            self._load(repair=True)

    def _release(self) -> None:
        self._wal.close()
        self._folder_lock.close()
        self._raw.clear()
        self._approx.clear()
        self._meta_sig = None

    def _load(self, *, repair: bool) -> None:
        """Map meta's snapshot and replay the log from scratch; with ``repair``, tidy the
        folder too."""
        self._invalid = True  # until the load completes: a failed one is retried, not used
        meta = self._files.read_meta(create=repair)
        generation = int(meta["generation"])
        snapshot = meta.get("snapshot")
        if snapshot is None:
            self._raw.load(None, mapped=False)
            snapshot_bytes = 0
        else:
            base, snapshot_bytes, mapped = self._files.read_snapshot(str(snapshot))
            self._raw.load(base, mapped=mapped)
        self._generation = generation
        self._snapshot_name = None if snapshot is None else str(snapshot)
        self._snapshot_bytes = snapshot_bytes
        self._approx.load(meta)
        self._meta_sig = self._files.stat_meta()
        self._wal.end = 0
        if repair:
            self._files.remove_leftovers({self._snapshot_name, *self._approx.file_names()})
        self._replay(repair=repair)
        self._invalid = False

    def _replay(self, *, repair: bool) -> None:
        """Apply the log records written after what memory holds (see
        :meth:`WriteAheadLog.replay`). With ``repair`` (lock held exclusively) a bad
        tail is cut off; without it, it may be a record being written right now.
        """
        replayed = self._wal.replay(self._generation, self._apply)
        if repair and self._wal.repair(replayed):
            self._snapshot()

    def _apply(self, changes: Changes) -> None:
        for touched in self._raw.apply(changes):
            if touched.size:
                self._approx.note_changed(touched)

    # ------------------------------------------------------------------ writing

    def _append(
        self, op: int, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32] | None
    ) -> None:
        try:
            self._wal.append(op, self._generation, ids, vectors)
        except AppendError as exc:
            if not exc.cut_back:
                self._invalid = True
            raise

    def _fold_log(self) -> None:
        """Take a snapshot unless the current one holds everything already."""
        if self._wal.end > 0 or self._snapshot_name is None:
            self._snapshot()

    def _maybe_compact(self) -> None:
        if self._wal.end > max(self._wal_limit, self._snapshot_bytes):
            self._snapshot()

    def _snapshot(self) -> None:
        """Write generation g+1 = the current state, commit it, and reset the log.

        The steps, and why a crash after any of them loses and duplicates nothing, are
        in :mod:`~vitdex.vectors.faiss.snapshot`. In memory, the new file becomes the
        base (mapped) between the commit and the log reset, and the overlay is emptied;
        the old base is unmapped then. Should that fail, the disk is already committed:
        memory is marked stale and reloaded from it at the next call.
        """
        generation = self._generation + 1
        name = f"index.{generation}.faiss"
        base_ids, keep, overlay_ids = self._raw.live_ids()
        if keep is not None:
            base_ids = base_ids[keep]
        size = self._files.write_snapshot(name, self._raw.live_rows(keep), (base_ids, overlay_ids))
        changed = self._approx.save_changed(generation)
        self._files.write_meta(
            self._files.meta(
                generation=generation,
                snapshot=name,
                count=len(self._raw.members),
                ann=self._approx.meta,
                changed=changed,
            )
        )
        old = self._snapshot_name
        old_changed = self._approx.changed_file
        with self._stale_on_failure():
            self._generation = generation
            self._snapshot_name = name
            self._snapshot_bytes = size
            self._approx.changed_file = changed
            self._meta_sig = self._files.stat_meta()
            self._map_new_base(name)
            self._wal.truncate(0)
        if old is not None:
            self._files.remove(old)
        if old_changed is not None:
            self._files.remove(old_changed)

    def _map_new_base(self, name: str) -> None:
        """Make the just-written snapshot ``name`` the base, with an empty overlay."""
        base, _, mapped = self._files.read_snapshot(name)
        if int(base.ntotal) != len(self._raw.members):
            raise StoreError(
                f"the snapshot {self.folder / name} holds {base.ntotal} vectors, "
                f"not the {len(self._raw.members)} written to it"
            )
        self._raw.set_base(base, mapped=mapped)

    def _build(
        self, spec: IndexSpec, progress: Callable[[str, float], None] | None
    ) -> dict[str, Any]:
        """Build, save and commit the index of ``spec`` (lock held, log empty).

        Built from the base alone: re-scoring reads candidates from the base by position,
        so every id the index holds must be there (callers snapshot first, which empties
        the overlay; the check below only guards that).
        """
        if self._raw.has_changes():
            self._snapshot()
        report = self._approx.build(
            spec,
            self._raw,
            generation=self._generation,
            snapshot=self._snapshot_name,
            progress=progress,
        )
        self._meta_sig = self._files.stat_meta()
        return report

    # ------------------------------------------------------------------ other processes

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the folder's lock exclusively, caught up with every other writer."""
        self._ensure_open()
        with self._folder_lock.held(EXCLUSIVE):
            self._catch_up(repair=True)
            yield

    def _ready_for_read(self) -> None:
        self._ensure_open()
        # Two stat calls when nothing changed; the shared lock only when something did.
        if self._files.stat_meta() != self._meta_sig or self._wal.size() != self._wal.end:
            with self._folder_lock.held(SHARED):
                self._catch_up(repair=False)

    def _catch_up(self, *, repair: bool) -> None:
        with self._stale_on_failure():
            if self._files.stat_meta() != self._meta_sig or self._wal.size() < self._wal.end:
                self._load(repair=repair)  # another process took a snapshot
            elif self._wal.size() != self._wal.end:
                self._replay(repair=repair)

    @contextlib.contextmanager
    def _stale_on_failure(self) -> Iterator[None]:
        """Mark memory stale if the body fails: the next call reloads it from disk."""
        try:
            yield
        except BaseException:
            self._invalid = True
            raise

    @staticmethod
    def _id_array(ids: npt.ArrayLike) -> npt.NDArray[np.int64]:
        out = check_ids(ids)
        if out.size and (out == -1).any():
            raise ValueError("-1 cannot be an id: FAISS uses it to mean 'no result'")
        return out
