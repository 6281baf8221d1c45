"""The folder lock by which several processes share one FAISS store.

Any number of processes may open one store folder. A writer takes the ``flock`` on the
folder's ``lock`` file exclusively for the length of one call, and first catches up
with what other processes wrote (a newer ``meta.json``: reload; a longer log: replay
its new records). A reader takes nothing while the folder is as it last saw it (two
``stat`` calls tell), and the lock shared only to catch up. The kernel releases an
``flock`` with the last descriptor of its open file, so a writer killed by SIGKILL
never blocks the others; a forked child shares its parent's descriptor, and with it the
lock, so the store opens its own in each process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from vitdex.vectors.faiss.layout import LOCK

__all__ = ["EXCLUSIVE", "SHARED", "FolderLock"]

EXCLUSIVE = fcntl.LOCK_EX
SHARED = fcntl.LOCK_SH


class FolderLock:
    """The ``flock`` on ``folder/lock``, opened by :meth:`open` in each process."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK
        self._fd = -1

    def open(self) -> None:
        """Open (creating) the lock file in this process."""
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def close(self) -> None:
        """Close the descriptor (which releases the lock if held)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = -1

    @contextlib.contextmanager
    def held(self, mode: int) -> Iterator[None]:
        """Hold the lock in ``mode`` (:data:`EXCLUSIVE` or :data:`SHARED`) meanwhile."""
        fcntl.flock(self._fd, mode)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
