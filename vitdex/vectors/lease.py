"""The writing lease: a repair of the stores never races a live writer.

A writer's batch reaches the vector store *before* the SQL commit that records it (and
a delete reaches the store before the commit that forgets the rows), so while a writer
runs, the store may rightly hold ids the catalog does not know yet, or lack ids the
catalog still lists. A repair that compared the two at that moment would delete the
writer's in-flight vectors. Hence:

- every writer of the stores or of the catalog rows that record vectors (an index run, a
  library delete, ``migrate-store``, ``reindex``) holds the lease *shared* for its whole
  run: writers run side by side;
- a repair (the start-up check of an index run, ``doctor --repair``) takes it
  *exclusively*, and only when no writer holds it; otherwise it skips (or refuses) and
  says so;
- readers (search, status, ``doctor`` without ``--repair``) take nothing: they report a
  disagreement, never repair it.

The lease is an ``flock`` on ``VITDEX_HOME/locks/writers.lock``. The kernel releases an
flock when the last descriptor of its open file closes, so a writer killed by SIGKILL
never blocks a later repair. It guards the catalog and the stores together, Qdrant ones
on another machine included, and so assumes that every process writing to one catalog
runs with the same home on the same machine (flock does not reach across machines; on
a network filesystem only where it supports flock).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from vitdex.config import Settings
from vitdex.errors import StoreError

__all__ = ["WriteLease", "lease_path", "writing"]

#: How often a waiting exclusive request tries again.
_POLL_S = 0.05


def lease_path(settings: Settings) -> Path:
    """The lock file of the catalog and stores that ``settings`` point at."""
    return settings.storage.home / "locks" / "writers.lock"


class WriteLease:
    """One holder's lease; not shared between threads (each opens its own descriptor,
    so two holders in one process exclude each other exactly as two processes do)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self.mode: Literal["shared", "exclusive"] | None = None

    @classmethod
    def of(cls, settings: Settings) -> WriteLease:
        """The lease of the home ``settings`` point at (not yet held)."""
        return cls(lease_path(settings))

    @property
    def exclusive(self) -> bool:
        """Whether this holder may repair now (no writer runs)."""
        return self.mode == "exclusive"

    def _open(self) -> int:
        if self._fd < 0:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # O_CLOEXEC: a spawned helper must not keep a dead writer's lease alive.
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise StoreError(
                    f"cannot open the writing lease {self.path}: {exc.strerror or exc}"
                ) from None
        return self._fd

    def share(self) -> None:
        """Hold the lease as a writer, waiting while a repair holds it.

        From exclusive this is a downgrade; flock converts non-atomically, so a repair may
        slip in between, which is harmless as long as the holder wrote nothing yet.
        """
        fcntl.flock(self._open(), fcntl.LOCK_SH)
        self.mode = "shared"

    def try_exclusive(self, wait: float = 0.0) -> bool:
        """Hold the lease for a repair if no writer holds it within ``wait`` seconds.

        Never blocks longer than ``wait``; returns whether the lease is now exclusive. Only
        call it while holding nothing: a failed conversion from shared would drop the
        shared lock as well.
        """
        if self.mode == "shared":
            raise RuntimeError("release the shared lease before asking for an exclusive one")
        fd = self._open()
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(_POLL_S)
                continue
            self.mode = "exclusive"
            return True

    def writers_active(self) -> bool:
        """Whether some writer (or repair) holds the lease now; for reports.

        Takes and drops the exclusive lock at once when free, so a writer starting at that
        instant waits microseconds.
        """
        if self.mode is not None:
            raise RuntimeError("writers_active() is for holders of nothing")
        free = self.try_exclusive()
        self.release()
        return not free

    def release(self) -> None:
        """Give the lease back (closing the descriptor releases the flock)."""
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
        self.mode = None

    def __enter__(self) -> WriteLease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit os may be gone
            self.release()


@contextmanager
def writing(settings: Settings) -> Iterator[WriteLease]:
    """Hold the writing lease shared for the block: the caller writes vectors or the
    catalog rows that record them, so no repair may run meanwhile."""
    lease = WriteLease.of(settings)
    lease.share()
    try:
        yield lease
    finally:
        lease.release()
