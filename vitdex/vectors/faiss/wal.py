"""The write-ahead log of a FAISS store: ``wal.bin``, every change since the snapshot.

Every upsert and delete is one record, appended with one ``write`` and ``fdatasync``
before the call returns: that is what makes a write durable without rewriting the
snapshot. A record is a 36-byte little-endian header followed by its payload::

    magic "VXW1" | op u8 (1 upsert, 2 delete) | 3 pad | generation u64 | n u32 | dim u32
    | payload bytes u64 | CRC32 u32 of header-before-CRC + payload
    payload = ids int64[n], then (upsert only) vectors float32[n, dim]

Each record carries the generation of the snapshot it was written after, so a log that
a crash left behind an already committed snapshot is recognised and skipped. Replay
stops at the first record that is torn (the log ends inside it: a crash mid-append,
whose call never returned) or corrupt (bad magic, length or checksum); the store then
cuts that tail off, never raises, and keeps a copy of corrupt bytes for inspection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from vitdex.errors import StoreError
from vitdex.vectors.faiss.layout import META, WAL, sync_dir

__all__ = [
    "HEADER",
    "OP_DELETE",
    "OP_UPSERT",
    "AppendError",
    "Bad",
    "Changes",
    "Replayed",
    "WriteAheadLog",
]

log = logging.getLogger(__name__)

MAGIC = b"VXW1"
OP_UPSERT = 1
OP_DELETE = 2
HEADER = struct.Struct("<4sB3xQIIQI")
_CRC = struct.Struct("<I")
_CRC_AT = HEADER.size - _CRC.size
#: Replay hands over the coalesced changes of at most this many ids at a time.
_COALESCE = 1 << 16

#: Each id's last write in a run of records: its vector, or None when deleted.
Changes = dict[int, npt.NDArray[np.float32] | None]


class _Record(NamedTuple):
    op: int
    generation: int
    ids: npt.NDArray[np.int64]
    vectors: npt.NDArray[np.float32] | None
    size: int


class Bad(NamedTuple):
    """Why replay stopped: ``torn`` (the log ends inside a record) or corrupt bytes."""

    torn: bool
    reason: str


class Replayed(NamedTuple):
    """What a replay found, for the caller (holding the lock) to repair."""

    #: The log's size when it was read.
    size: int
    #: Records of an older generation were skipped (their snapshot holds them).
    stale: bool
    #: Records of the current generation were applied.
    current: bool
    #: Why the records stopped before ``size``; None when they did not.
    bad: Bad | None


class AppendError(StoreError):
    """An append failed and nothing was stored.

    ``cut_back`` is False when cutting the partial record off failed too: the file may
    then hold garbage after :attr:`WriteAheadLog.end`.
    """

    def __init__(self, message: str, *, cut_back: bool) -> None:
        super().__init__(message)
        self.cut_back = cut_back


class WriteAheadLog:
    """``wal.bin`` in ``folder``: append, replay, truncate.

    Not locked by itself: the store calls it holding its thread lock and the folder's
    ``flock`` (exclusive to append or repair, shared to read).
    """

    def __init__(self, folder: Path, dim: int, *, durable: bool) -> None:
        self.path = folder / WAL
        self.dim = dim
        self.durable = durable
        self._fd = -1
        #: Bytes of the log already reflected in memory; the file may hold more (another
        #: process's appends) or a torn tail after it.
        self.end = 0

    def open(self) -> None:
        """Open the log, creating it (durably) when the folder has none yet."""
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if created and self.durable:
            sync_dir(self.path.parent)

    def close(self) -> None:
        """Close the descriptor; nothing is written (every append was synced)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = -1
        self.end = 0

    def size(self) -> int:
        """The log's size on disk now (other processes may have appended)."""
        return os.fstat(self._fd).st_size

    def append(
        self,
        op: int,
        generation: int,
        ids: npt.NDArray[np.int64],
        vectors: npt.NDArray[np.float32] | None,
    ) -> None:
        """Append one record at :attr:`end` and sync it; on failure, cut it off, raise."""
        id_bytes = ids.astype("<i8", copy=False).tobytes()
        vec_bytes = b"" if vectors is None else vectors.astype("<f4", copy=False).tobytes()
        head = HEADER.pack(
            MAGIC, op, generation, ids.size, self.dim, len(id_bytes) + len(vec_bytes), 0
        )[:_CRC_AT]
        crc = zlib.crc32(vec_bytes, zlib.crc32(id_bytes, zlib.crc32(head)))
        record = b"".join((head, _CRC.pack(crc), id_bytes, vec_bytes))
        start = self.end
        try:
            _pwrite(self._fd, record, start)
            if self.durable:
                os.fdatasync(self._fd)
        except OSError as exc:
            # Cut the partial record off so later appends do not land after garbage.
            cut_back = True
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                cut_back = False
            raise AppendError(
                f"could not write to {self.path}: {exc}; nothing was stored", cut_back=cut_back
            ) from exc
        self.end = start + len(record)

    def replay(self, generation: int, apply: Callable[[Changes], None]) -> Replayed:
        """Hand the records after :attr:`end` that belong to ``generation`` to ``apply``.

        Records are coalesced (each id keeps its last write) and applied together: one
        ``remove_ids`` per run instead of one O(ntotal) pass per record. Records of older
        generations are skipped; a newer one means meta.json went back in time, and is
        refused. :attr:`end` moves past the last good record.
        """
        size = self.size()
        offset = self.end
        stale = current = False
        bad: Bad | None = None
        pending: Changes = {}
        while offset < size:
            record = self._read_record(offset, size)
            if isinstance(record, Bad):
                bad = record
                break
            if record.generation > generation:
                raise StoreError(
                    f"{self.path} holds records of generation {record.generation} "
                    f"but {self.path.with_name(META)} says {generation}: the meta file was "
                    "replaced by an older copy. Move the folder away and re-index."
                )
            if record.generation < generation:
                stale = True
            else:
                current = True
                if record.vectors is not None:
                    pending.update(zip(record.ids.tolist(), record.vectors, strict=True))
                else:
                    pending.update(dict.fromkeys(record.ids.tolist()))
                if len(pending) >= _COALESCE:
                    apply(pending)
                    pending = {}
            offset += record.size
        if pending:
            apply(pending)
        self.end = offset
        return Replayed(size, stale, current, bad)

    def _read_record(self, offset: int, size: int) -> _Record | Bad:
        if size - offset < HEADER.size:
            return Bad(True, "log ends inside a record header")
        head = _pread(self._fd, HEADER.size, offset)
        if len(head) < HEADER.size:
            return Bad(True, "log ends inside a record header")
        magic, op, generation, n, dim, length, crc = HEADER.unpack(head)
        if magic != MAGIC or op not in (OP_UPSERT, OP_DELETE):
            return Bad(False, "bad record magic")
        expected = 8 * n + (4 * n * dim if op == OP_UPSERT else 0)
        if length != expected:
            return Bad(False, "record length disagrees with its header")
        if offset + HEADER.size + length > size:
            return Bad(True, "log ends inside a record")
        payload = _pread(self._fd, length, offset + HEADER.size)
        if len(payload) < length:
            return Bad(True, "log ends inside a record")
        if zlib.crc32(payload, zlib.crc32(head[:_CRC_AT])) != crc:
            return Bad(False, "record checksum mismatch")
        if dim != self.dim:
            raise StoreError(f"{self.path} holds vectors of dim {dim}, not {self.dim}")
        ids = np.frombuffer(payload, dtype="<i8", count=n).astype(np.int64, copy=False)
        vectors = None
        if op == OP_UPSERT:
            vectors = np.frombuffer(payload, dtype="<f4", offset=8 * n).reshape(n, dim)
            vectors = vectors.astype(np.float32, copy=False)
        return _Record(op, generation, ids, vectors, HEADER.size + length)

    def repair(self, replayed: Replayed) -> bool:
        """Tidy the log after ``replayed`` (the folder locked exclusively): cut off a bad
        tail, and empty a log that holds only records of an older generation. True when
        stale records sit beside current ones: only a new snapshot can drop them."""
        if replayed.bad is not None:
            self._cut_tail(replayed.size, replayed.bad)
        if replayed.stale and not replayed.current:
            self.truncate(0)
        return replayed.stale and replayed.current

    def _cut_tail(self, size: int, bad: Bad) -> None:
        """Cut off the bytes from :attr:`end` to ``size``, where replay found ``bad``."""
        offset = self.end
        if bad.torn:
            # The expected result of a crash mid-append: that call never returned.
            log.warning("%s: dropping %d bytes of a torn last record", self.path, size - offset)
        else:
            # Not a plain torn append: keep the bytes for inspection before cutting.
            stamp = time.strftime("%Y%m%dT%H%M%S")
            keep = self.path.with_name(f"wal.corrupt-{stamp}-{offset}")
            with contextlib.suppress(OSError):
                keep.write_bytes(_pread(self._fd, size - offset, offset))
            log.error(
                "%s: %s at byte %d; replay stopped there, %d bytes set aside in %s",
                self.path,
                bad.reason,
                offset,
                size - offset,
                keep.name,
            )
        self.truncate(offset)

    def truncate(self, length: int) -> None:
        """Cut the log to ``length`` bytes (0 once a snapshot holds all of it)."""
        try:
            os.ftruncate(self._fd, length)
            if self.durable:
                os.fsync(self._fd)
        except OSError as exc:
            raise StoreError(f"could not truncate {self.path}: {exc}") from exc
        self.end = length


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
