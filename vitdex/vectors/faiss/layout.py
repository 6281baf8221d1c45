"""The folder of one FAISS store: the names of its files, how they are read, how they sync.

One folder per space::

    meta.json         format, space, dim, metric, index type, generation g, snapshot name,
                      and the approximate index in use (spec, file, build number)
    index.<g>.faiss   snapshot of generation g (``IndexIDMap2`` over ``IndexFlatIP``): the
                      raw vectors, kept exactly; written once, then only ever mapped
                      read-only; ``get`` and every rebuild read these
    wal.bin           write-ahead log: the upserts and deletes made since that snapshot
    ann.<b>.<tag>.faiss  optional approximate index (HNSW, IVF) of build b, derived from
                      the raw vectors by ``FaissStore.reindex``; never the only copy
    changed.<g>.npy   ids written or deleted between that build and snapshot g (int64)
    lock              ``flock`` target; one process writes at a time

Every part of the store names these files and reads FAISS files the same way; keeping
the names here, apart from the parts, keeps them from drifting apart.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import faiss

__all__ = [
    "ANN_NAME",
    "CHANGED_NAME",
    "LOCK",
    "META",
    "METRICS",
    "SNAPSHOT_NAME",
    "WAL",
    "file_size",
    "fsync_path",
    "map_index",
    "read_index",
    "sync_dir",
]

META = "meta.json"
WAL = "wal.bin"
LOCK = "lock"
SNAPSHOT_NAME = re.compile(r"^index\.(\d+)\.faiss$")
ANN_NAME = re.compile(r"^ann\.(\d+)\.[a-z0-9_]+\.faiss$")
CHANGED_NAME = re.compile(r"^changed\.(\d+)\.npy$")
#: The metrics a store may use, as FAISS names them.
METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
#: Read snapshots memory-mapped (FAISS >= 1.11); 0 reads them into memory instead.
MMAP_FLAG: int = int(getattr(faiss, "IO_FLAG_MMAP_IFC", 0))


def read_index(path: Path) -> tuple[faiss.Index, bool]:
    """The FAISS index in ``path``, memory-mapped where this FAISS can; and whether it is.

    Raises FAISS's ``RuntimeError`` for a missing or broken file. A mapped index is
    read-only: FAISS aborts the process on any write to it.
    """
    return faiss.read_index(str(path), MMAP_FLAG), MMAP_FLAG != 0


def map_index(path: Path) -> faiss.Index | None:
    """The index in ``path`` memory-mapped, or None when this FAISS cannot map files."""
    return faiss.read_index(str(path), MMAP_FLAG) if MMAP_FLAG else None


def sync_dir(folder: Path) -> None:
    """Make the entries of ``folder`` (a file created, renamed or removed) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_path(path: Path) -> None:
    """Make the contents of the file ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_size(path: Path) -> int:
    """The size of ``path`` in bytes; 0 when it does not exist."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
