"""The first stages of indexing: read and hash each file, then decode it, in threads.

A file's bytes are read once: they are hashed (an unchanged or duplicate file needs no
decoding) and decoded from memory. The decoders run beside the model in a bounded pool,
so the forward pass never waits for a whole batch to be decoded.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Generator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from vitdex.config import Settings
from vitdex.errors import ImageError
from vitdex.indexer.cores import decode_workers
from vitdex.indexer.images import DecodedImage, decode_image, read_photo

__all__ = ["Batch", "Prepared", "Reader", "Task"]


@dataclass(slots=True)
class Task:
    """One file that needs work, as the scan found it."""

    image_id: int
    path: str
    size: int
    mtime_ns: int
    known_sha: str | None
    complete: bool  # already has a vector in every current space
    library_id: int
    allow_reuse: bool = True


@dataclass(slots=True)
class Prepared:
    """A task after reading: its hash and either its pixels, a source of identical
    vectors, the news that nothing changed, or why it failed."""

    task: Task
    sha256: str | None = None
    decoded: DecodedImage | None = None
    error: str | None = None
    reuse_from: int | None = None
    unchanged: bool = False
    read_s: float = 0.0
    decode_s: float = 0.0


@dataclass
class Batch:
    """Prepared files sorted by what writing them takes."""

    decoded: list[Prepared] = field(default_factory=list)
    reused: list[tuple[Prepared, int]] = field(default_factory=list)
    failed: list[Prepared] = field(default_factory=list)
    touched: list[Prepared] = field(default_factory=list)
    moved: list[tuple[Prepared, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return (
            len(self.decoded)
            + len(self.reused)
            + len(self.failed)
            + len(self.touched)
            + len(self.moved)
        )


class Reader:
    """Reads, hashes and decodes tasks in a thread pool, a bounded window ahead."""

    def __init__(
        self,
        settings: Settings,
        within: dict[int, tuple[Path, ...]],
        min_size: tuple[int, int],
        timings: defaultdict[str, float],
    ) -> None:
        """``within``: library id → the folders its photos may be read from;
        ``min_size``: (width, height) a draft decode must not go below."""
        self.settings = settings
        self.within = within
        self.min_size = min_size
        self.timings = timings

    def prepare(self, task: Task, reusable: dict[str, int]) -> Prepared:
        """Runs in a worker thread: read, hash, and decode unless the vectors exist."""
        out = Prepared(task)
        t0 = time.perf_counter()
        try:
            # A link out of the library (or swapped in since the scan) is refused here.
            data = read_photo(task.path, self.within[task.library_id])
        except ImageError as exc:
            out.error = exc.message
            return out
        out.sha256 = hashlib.sha256(data).hexdigest()
        out.read_s = time.perf_counter() - t0
        if task.complete and task.known_sha == out.sha256:
            out.unchanged = True  # touched, or copied back with the same bytes
            return out
        source = reusable.get(out.sha256) if task.allow_reuse else None
        if source is not None and source != task.image_id:
            out.reuse_from = source
            return out
        t1 = time.perf_counter()
        try:
            out.decoded = decode_image(
                data,
                max_megapixels=self.settings.index.max_megapixels,
                min_size=self.min_size,
            )
        except ImageError as exc:
            out.error = exc.message
        out.decode_s = time.perf_counter() - t1
        return out

    def _workers(self) -> int:
        return decode_workers(self.settings.index.decode_workers)

    def stream(
        self, tasks: list[Task], reusable: dict[str, int]
    ) -> Generator[Prepared, None, None]:
        """Results of :meth:`prepare` as they finish, with a bounded read-ahead."""
        window = max(4, 3 * self.settings.model.batch_size)
        pending: set[Future[Prepared]] = set()
        queue = iter(tasks)
        with ThreadPoolExecutor(self._workers(), thread_name_prefix="vitdex-decode") as pool:
            try:
                while True:
                    while len(pending) < window:
                        task = next(queue, None)
                        if task is None:
                            break
                        pending.add(pool.submit(self.prepare, task, reusable))
                    if not pending:
                        return
                    t0 = time.perf_counter()
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    self.timings["wait_decode"] += time.perf_counter() - t0
                    for fut in done:
                        yield fut.result()
            finally:
                for fut in pending:
                    fut.cancel()
