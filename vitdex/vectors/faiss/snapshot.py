"""The committed state of a FAISS store: ``meta.json`` and the files it names.

``meta.json`` is the commit point. Every other file (a snapshot ``index.<g>.faiss``, an
approximate index ``ann.<b>.<tag>.faiss``, a ``changed.<g>.npy``) is written whole
under a temporary name, synced, renamed and its folder synced, and only then named by a
new ``meta.json``, itself written the same way. A crash therefore leaves either the old
meta and its files (plus a leftover that opening deletes) or the new ones, never a half.

Folding the log into snapshot g+1, and what a crash after each step leaves:

1. ``index.<g+1>.faiss`` written via a temp file, synced, renamed. Meta still names
   snapshot g, so opening uses snapshot g + the log; the new file is a leftover that
   opening deletes.
2. ``meta.json`` replaced (temp file, sync, rename): the commit point. Opening now uses
   snapshot g+1 and skips the log's generation-g records, which it already holds.
3. The log is truncated; later records carry generation g+1.
4. Snapshot g is deleted (a leftover otherwise).

Replay is idempotent besides (each id ends at its last write), so even a mistaken double
replay would neither lose nor duplicate a vector. With an approximate index, the ids
changed since its build are saved beside the snapshot (``changed.<g+1>.npy``, written
like it before step 2), because the log that named them is reset in step 3.

A snapshot is not written by FAISS but streamed, chunk by chunk, in the very bytes
``faiss.write_index`` writes for an ``IndexIDMap2(Flat)`` (so any FAISS version reads
it): its header (:func:`snapshot_prefix`), the vectors, then the id map. The rows come
from the mapped base and the overlay and are never gathered into one array, so
compaction holds no second copy of the store in memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import faiss
import numpy as np
import numpy.typing as npt

from vitdex.errors import SpaceMismatchError, StoreError
from vitdex.vectors.faiss.layout import (
    ANN_NAME,
    CHANGED_NAME,
    META,
    METRICS,
    SNAPSHOT_NAME,
    WAL,
    file_size,
    fsync_path,
    read_index,
    sync_dir,
)

__all__ = [
    "FORMAT_VERSION",
    "INDEX_TYPE",
    "PLAIN_FORMAT",
    "SnapshotFiles",
    "snapshot_prefix",
]

#: Format 2 is written only while an approximate index is in use (older readers, which
#: would not track the ids changed since its build, refuse it); plain stores stay 1.
FORMAT_VERSION = 2
PLAIN_FORMAT = 1
INDEX_TYPE = "IDMap2,Flat"
#: The header FAISS writes for an index: d i32, ntotal i64, two unused i64 (1 << 20),
#: is_trained u8, metric i32 (see :func:`snapshot_prefix`).
_INDEX_HEADER = struct.Struct("=iqqq?i")


class SnapshotFiles:
    """Reads and atomically writes the committed files of the store in ``folder``.

    Knows the space the folder must hold (``space``, ``dim``, ``metric``) and refuses a
    folder built for another. ``durable=False`` skips the syncs (tests, benchmarks).
    """

    def __init__(self, folder: Path, space: str, dim: int, metric: str, *, durable: bool) -> None:
        self.folder = folder
        self.space = space
        self.dim = dim
        self.metric = metric
        self.durable = durable
        self._meta_path = str(folder / META)  # stat at every call: no Path work

    # ------------------------------------------------------------------ meta.json

    def meta(
        self,
        *,
        generation: int,
        snapshot: str | None,
        count: int,
        ann: Mapping[str, Any] | None = None,
        changed: str | None = None,
    ) -> dict[str, Any]:
        """The description of snapshot ``generation`` (and of the index in use, if any)."""
        meta: dict[str, Any] = {
            "format": FORMAT_VERSION if ann else PLAIN_FORMAT,
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

    def read_meta(self, *, create: bool) -> dict[str, Any]:
        """The folder's ``meta.json``, checked against this space; with ``create``, an
        empty store's when the folder holds no vector data yet."""
        path = self.folder / META
        try:
            meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            if not create:
                raise StoreError(f"{path} has disappeared; the store cannot be read") from None
            leftovers = [p.name for p in self.folder.iterdir() if SNAPSHOT_NAME.match(p.name)]
            if leftovers or file_size(self.folder / WAL) > 0:
                raise StoreError(
                    f"{path} is missing but the folder holds vector data "
                    f"({', '.join([*leftovers, WAL])}); refusing to guess what it is. "
                    "Move the folder away and re-index to rebuild it."
                ) from None
            meta = self.meta(generation=0, snapshot=None, count=0)
            self.write_meta(meta)
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

    def write_meta(self, meta: Mapping[str, Any]) -> None:
        """Replace ``meta.json`` atomically: the commit point of every change of files."""

        def fill(tmp: Path) -> None:
            with tmp.open("w", encoding="utf-8") as handle:
                json.dump(meta, handle, indent=2)
                handle.write("\n")

        self._write_file(META, fill, what="")

    def stat_meta(self) -> tuple[int, int, int] | None:
        """A signature of ``meta.json`` that changes whenever another one is committed."""
        try:
            st = os.stat(self._meta_path)  # noqa: PTH116 - a str path: no Path objects per call
        except FileNotFoundError:
            return None
        # meta.json is only ever replaced by a new file, so its inode changes each time.
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    # ------------------------------------------------------------------ snapshots

    def read_snapshot(self, name: str) -> tuple[faiss.IndexIDMap2, int, bool]:
        """Open the snapshot ``name`` memory-mapped (read-only) where FAISS can; with its
        size in bytes and whether it is mapped."""
        path = self.folder / name
        try:
            index, mapped = read_index(path)
        except RuntimeError as exc:  # FAISS reports a missing or broken file this way
            raise StoreError(f"cannot read the snapshot {path}: {exc}") from exc
        if not isinstance(index, faiss.IndexIDMap2) or index.d != self.dim:
            raise StoreError(
                f"the snapshot {path} is a {type(index).__name__} of dim {index.d}, "
                f"not an IndexIDMap2 of dim {self.dim}"
            )
        return index, path.stat().st_size, mapped

    def write_snapshot(
        self,
        name: str,
        vectors: Iterable[npt.NDArray[np.float32]],
        ids: Sequence[npt.NDArray[np.int64]],
    ) -> int:
        """Write the snapshot ``name`` holding the rows ``vectors`` yields, in blocks, under
        the ``ids`` (blocks, in the same order); its size in bytes."""
        n = sum(int(block.size) for block in ids)

        def stream(path: Path) -> None:
            with path.open("wb") as handle:
                handle.write(snapshot_prefix(self.dim, n, self.metric))
                for rows in vectors:
                    _write_array(handle, rows)
                handle.write(struct.pack("=Q", n))  # the id map: its length, then the ids
                for block in ids:
                    _write_array(handle, block)

        return self._write_file(name, stream)

    def write_index(self, index: faiss.Index, name: str) -> int:
        """Write ``index`` to ``name`` atomically (temp file, sync, rename, sync folder)."""
        return self._write_file(name, lambda tmp: faiss.write_index(index, str(tmp)))

    def write_changed(self, name: str, ids: npt.NDArray[np.int64]) -> None:
        """Save the ids changed since the approximate index's build as ``name``."""

        def fill(tmp: Path) -> None:
            with tmp.open("wb") as handle:
                np.save(handle, ids, allow_pickle=False)

        self._write_file(name, fill, what="")

    def read_changed(self, name: str) -> npt.NDArray[np.int64]:
        """The ids saved by :meth:`write_changed`."""
        path = self.folder / name
        try:
            saved = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc
        return np.asarray(saved, dtype=np.int64)

    def remove(self, name: str) -> None:
        """Delete a file no longer named by ``meta.json`` (gone already is fine)."""
        with contextlib.suppress(FileNotFoundError):
            (self.folder / name).unlink()

    def remove_leftovers(self, keep: set[str | None]) -> None:
        """Delete what a crash during a flush can leave: temp files, and snapshots,
        index and changed files other than those in ``keep``."""
        for path in self.folder.iterdir():
            name = path.name
            if name.endswith(".tmp") or (
                (SNAPSHOT_NAME.match(name) or ANN_NAME.match(name) or CHANGED_NAME.match(name))
                and name not in keep
            ):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def sync(self, folder: Path | None = None) -> None:
        """Make the entries of the store's folder (or ``folder``) durable."""
        if self.durable:
            sync_dir(folder or self.folder)

    def _write_file(
        self, name: str, write: Callable[[Path], None], *, what: str = "the snapshot "
    ) -> int:
        """Have ``write`` fill a temp file, sync it and rename it to ``name``, then sync
        the folder; its size. ``what`` names the file in the error."""
        final = self.folder / name
        tmp = final.with_name(name + ".tmp")
        try:
            write(tmp)
            if self.durable:
                fsync_path(tmp)
            tmp.replace(final)
            self.sync()
        except (OSError, RuntimeError) as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StoreError(f"could not write {what}{final}: {exc}") from exc
        return final.stat().st_size


def snapshot_prefix(dim: int, n: int, metric: str) -> bytes:
    """What ``faiss.write_index`` writes before the vectors of an ``IndexIDMap2`` over an
    ``IndexFlatIP`` (``IndexFlatL2``) of ``n`` vectors: the two index headers and the
    length of the flat codes in floats. The vectors and the id map follow.
    """
    # The two int64 fields after ntotal are unused; FAISS always writes 1 << 20.
    header = _INDEX_HEADER.pack(dim, n, 1 << 20, 1 << 20, True, METRICS[metric])
    flat = b"IxFI" if metric == "ip" else b"IxF2"
    return b"IxM2" + header + flat + header + struct.pack("=Q", n * dim)


def _write_array(handle: BinaryIO, array: npt.NDArray[Any]) -> None:
    """Write the bytes of a C-contiguous ``array`` (native byte order, as FAISS does)."""
    handle.write(np.ascontiguousarray(array).data)
