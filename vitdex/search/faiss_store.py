"""The embedded default vector store: exact FAISS search, every write durable on return.

One folder per space::

    meta.json         format, space, dim, metric, index type, generation g, snapshot name
    index.<g>.faiss   snapshot of generation g (``IndexIDMap2`` over ``IndexFlatIP``)
    wal.bin           write-ahead log: the upserts and deletes made since that snapshot
    lock              ``flock`` target; one process writes at a time

A WAL record is a 36-byte little-endian header followed by its payload, written with one
``write`` and ``fdatasync``::

    magic "VXW1" | op u8 (1 upsert, 2 delete) | 3 pad | generation u64 | n u32 | dim u32
    | payload bytes u64 | CRC32 u32 of header-before-CRC + payload
    payload = ids int64[n], then (upsert only) vectors float32[n, dim]

Opening loads the snapshot and replays the records of its generation; a torn or corrupt
tail is cut off, never raised. ``flush`` folds the log into a new snapshot (see
:meth:`FaissStore._snapshot` for why a crash at any step loses and duplicates nothing).
Several processes may open one folder: writers take the lock per call, and every call
first catches up with what other processes wrote.
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
from typing import Any, NamedTuple, ParamSpec, TypeVar

import faiss
import numpy as np
import numpy.typing as npt

from vitdex.errors import SpaceMismatchError, StoreError
from vitdex.search.store import SearchHit, VectorNotFoundError

__all__ = ["FaissStore"]

log = logging.getLogger(__name__)
_P = ParamSpec("_P")
_T = TypeVar("_T")

FORMAT_VERSION = 1
INDEX_TYPE = "IDMap2,Flat"
_MAGIC = b"VXW1"
_OP_UPSERT = 1
_OP_DELETE = 2
_HEADER = struct.Struct("<4sB3xQIIQI")
_CRC = struct.Struct("<I")
_CRC_AT = _HEADER.size - _CRC.size
_SNAPSHOT_NAME = re.compile(r"^index\.(\d+)\.faiss$")
_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
_META = "meta.json"
_WAL = "wal.bin"
_LOCK = "lock"


class _Record(NamedTuple):
    op: int
    generation: int
    ids: npt.NDArray[np.int64]
    vectors: npt.NDArray[np.float32] | None
    size: int


class _Bad(NamedTuple):
    """Why replay stopped: ``torn`` (the log ends inside a record) or corrupt bytes."""

    torn: bool
    reason: str


class FaissStore:
    """Vectors of one space in ``folder``, searched exactly by inner product.

    Opening does no I/O; the first call loads the snapshot and replays the log. Every
    :meth:`upsert` and :meth:`delete` is on disk when it returns (one appended log record
    and an ``fdatasync``; ``durable=False`` skips the syncs, for tests and benchmarks).
    The log is folded into a snapshot by :meth:`flush`, or on its own once it outgrows
    both ``wal_limit_bytes`` and the snapshot. Methods are thread-safe.

    ``search_threads`` caps FAISS's OpenMP threads during a search (``None``: FAISS's
    default, every core). When the cores are busy with other work, such as ViT inference
    or other processes, one thread is several times faster than spinning OpenMP teams.
    """

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
    ) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
        if search_threads is not None and search_threads < 1:
            raise ValueError(f"search_threads must be at least 1, got {search_threads}")
        self.folder = Path(folder)
        self.space = space
        self.dim = int(dim)
        self.metric = metric
        self.durable = durable
        self._wal_limit = int(wal_limit_bytes)
        self._search_threads = search_threads
        self._lock = threading.RLock()
        self._closed = False
        # Set when memory may no longer match the disk (a failed write): reload before use.
        self._invalid = False
        self._pid = -1
        self._lock_fd = -1
        self._wal_fd = -1
        self._index: faiss.IndexIDMap2 | None = None
        # Python-side id set: O(1) membership, so a batch of new ids costs no O(ntotal)
        # remove_ids scan, and missing ids are named without asking FAISS one by one.
        self._members: set[int] = set()
        self._generation = 0
        self._snapshot_name: str | None = None
        self._snapshot_bytes = 0
        self._meta_sig: tuple[int, int, int] | None = None
        # Bytes of wal.bin already reflected in memory; the file may hold more (another
        # process's appends) or a torn tail after it.
        self._wal_end = 0

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
        """
        q = self._vector_array(queries, "queries")
        if k < 0:
            raise ValueError(f"k must not be negative, got {k}")
        allowed = None if allowed_ids is None else np.unique(self._id_array(allowed_ids))
        with self._lock:
            self._ready_for_read()
            index = self._loaded()
            params = None
            if allowed is None:
                limit = index.ntotal
            else:
                allowed = self._present(allowed)
                limit = int(allowed.size)
                params = faiss.SearchParameters()
                params.sel = faiss.IDSelectorBatch(allowed)
            k_eff = min(int(k), limit)
            if k_eff == 0 or q.shape[0] == 0:
                return [[] for _ in range(q.shape[0])]
            if self._search_threads is None:
                distances, labels = index.search(q, k_eff, params=params)
            else:
                # OpenMP keeps this setting per calling thread: set it, then put it back.
                before = faiss.omp_get_max_threads()
                faiss.omp_set_num_threads(self._search_threads)
                try:
                    distances, labels = index.search(q, k_eff, params=params)
                finally:
                    faiss.omp_set_num_threads(before)
        if self.metric == "l2":
            distances = -distances  # squared distance: negate so higher is closer
        return [
            [SearchHit(int(i), float(d)) for i, d in zip(row_i, row_d, strict=True) if i != -1]
            for row_i, row_d in zip(labels.tolist(), distances.tolist(), strict=True)
        ]

    def get(self, ids: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """The stored vectors of ``ids`` [n, dim], bit-identical, in the order asked.

        Raises :class:`VectorNotFoundError` (a ``KeyError``) naming the missing ids.
        """
        id_arr = self._id_array(ids)
        with self._lock:
            self._ready_for_read()
            index = self._loaded()
            missing = [i for i in id_arr.tolist() if i not in self._members]
            if missing:
                raise VectorNotFoundError(self.space, missing)
            if id_arr.size == 0:
                return np.empty((0, self.dim), dtype=np.float32)
            return np.asarray(index.reconstruct_batch(id_arr), dtype=np.float32)

    def ids(self) -> npt.NDArray[np.int64]:
        """Every stored id, sorted."""
        with self._lock:
            self._ready_for_read()
            stored = faiss.vector_to_array(self._loaded().id_map)
        return np.sort(stored.astype(np.int64, copy=False))

    def count(self) -> int:
        """How many vectors the store holds."""
        with self._lock:
            self._ready_for_read()
            return int(self._loaded().ntotal)

    def flush(self) -> None:
        """Fold the log into a new snapshot, so that opening reads one file and no log."""
        with self._lock, self._writing():
            if self._wal_end > 0 or self._snapshot_name is None:
                self._snapshot()

    def close(self) -> None:
        """Release the files and the index. Writes nothing: every call was durable already.

        Any later call raises :class:`StoreError`; open a new store to continue.
        """
        with self._lock:
            self._closed = True
            self._drop()

    def describe(self) -> dict[str, Any]:
        """Backend, space, dim, metric, index type, generation, count and sizes on disk."""
        with self._lock:
            self._ready_for_read()
            count = int(self._loaded().ntotal)
            meta_bytes = _size(self.folder / _META)
            return {
                "backend": "faiss",
                "space": self.space,
                "dim": self.dim,
                "metric": self.metric,
                "index_type": INDEX_TYPE,
                "exact": True,
                "format": FORMAT_VERSION,
                "folder": str(self.folder),
                "count": count,
                "generation": self._generation,
                "snapshot_bytes": self._snapshot_bytes,
                "wal_bytes": self._wal_end,
                "bytes_on_disk": self._snapshot_bytes + self._wal_end + meta_bytes,
                # float32 codes + the id map + (roughly) one hash-map node in FAISS's
                # reverse map and one entry in the Python id set.
                "memory_bytes_per_vector": 4 * self.dim + 8 + 32 + 64,
                "durable": self.durable,
            }

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
        assert self._index is not None
        return self._index

    def _ensure_open(self) -> None:
        """Open the files and load everything on first use (or after a fork or failure)."""
        if self._closed:
            raise StoreError(f"the vector store of space {self.space!r} is closed")
        if self._index is not None and not self._invalid and self._pid == os.getpid():
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
        self._index = None
        self._members = set()
        self._meta_sig = None
        self._wal_end = 0

    def _load(self, *, repair: bool) -> None:
        """Read meta, snapshot and log from scratch; with ``repair``, tidy the folder too."""
        self._invalid = True  # until the load completes: a failed one is retried, not used
        meta = self._read_meta(create=repair)
        generation = int(meta["generation"])
        snapshot = meta.get("snapshot")
        if snapshot is None:
            index = faiss.IndexIDMap2(self._new_flat())
            snapshot_bytes = 0
        else:
            index, snapshot_bytes = self._read_snapshot(str(snapshot))
        self._index = index
        self._members = set(faiss.vector_to_array(index.id_map).tolist())
        self._generation = generation
        self._snapshot_name = None if snapshot is None else str(snapshot)
        self._snapshot_bytes = snapshot_bytes
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
        if meta.get("backend") != "faiss" or int(meta.get("format", -1)) > FORMAT_VERSION:
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

    def _read_snapshot(self, name: str) -> tuple[faiss.IndexIDMap2, int]:
        path = self.folder / name
        try:
            index = faiss.read_index(str(path))
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
        for path in self.folder.iterdir():
            if path.name.endswith(".tmp") or (
                _SNAPSHOT_NAME.match(path.name) and path.name != self._snapshot_name
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
        """
        generation = self._generation + 1
        name = f"index.{generation}.faiss"
        size = self._write_snapshot_file(name)
        self._write_meta(
            self._meta(generation=generation, snapshot=name, count=self._loaded().ntotal)
        )
        old = self._snapshot_name
        self._generation = generation
        self._snapshot_name = name
        self._snapshot_bytes = size
        self._meta_sig = self._stat_meta()
        self._reset_wal()
        if old is not None:
            self._remove_snapshot(old)

    def _write_snapshot_file(self, name: str) -> int:
        final = self.folder / name
        tmp = final.with_name(name + ".tmp")
        try:
            faiss.write_index(self._loaded(), str(tmp))
            if self.durable:
                _fsync_path(tmp)
            tmp.replace(final)
            self._sync_dir()
        except (OSError, RuntimeError) as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StoreError(f"could not write the snapshot {final}: {exc}") from exc
        return final.stat().st_size

    def _reset_wal(self) -> None:
        self._truncate_wal(0)

    def _remove_snapshot(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.folder / name).unlink()

    def _meta(self, *, generation: int, snapshot: str | None, count: int) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "backend": "faiss",
            "space": self.space,
            "dim": self.dim,
            "metric": self.metric,
            "index_type": INDEX_TYPE,
            "generation": generation,
            "snapshot": snapshot,
            "count": int(count),  # at snapshot time; the log may add or remove some
        }

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
            st = (self.folder / _META).stat()
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
        index = self._loaded()
        present = self._present(ids)
        if present.size:
            index.remove_ids(faiss.IDSelectorBatch(present))
        index.add_with_ids(vectors, ids)
        self._members.update(ids.tolist())

    def _apply_coalesced(self, changes: Mapping[int, npt.NDArray[np.float32] | None]) -> None:
        if not changes:
            return
        self._apply_delete(np.fromiter(changes.keys(), dtype=np.int64, count=len(changes)))
        upserts = [(i, v) for i, v in changes.items() if v is not None]
        if upserts:
            ids = np.fromiter((i for i, _ in upserts), dtype=np.int64, count=len(upserts))
            self._apply_upsert(ids, np.stack([v for _, v in upserts]))

    def _apply_delete(self, ids: npt.NDArray[np.int64]) -> int:
        present = self._present(ids)
        if present.size:
            self._loaded().remove_ids(faiss.IDSelectorBatch(present))
            self._members.difference_update(present.tolist())
        return int(present.size)

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
        arr = np.asarray(values, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2:
            raise ValueError(f"{what} must be [n, {self.dim}], got shape {arr.shape}")
        if arr.shape[1] != self.dim:
            raise SpaceMismatchError(
                f"{what} have dim {arr.shape[1]} but space {self.space!r} holds dim {self.dim}"
            )
        if arr.size and not np.isfinite(arr).all():
            raise ValueError(f"{what} contain NaN or infinite values")
        return np.ascontiguousarray(arr)


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
