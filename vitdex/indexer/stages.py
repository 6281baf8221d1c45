"""The first stages of indexing: read and hash each file, then decode it, in threads.

A file's bytes are read once: they are hashed (an unchanged or duplicate file needs no
decoding) and decoded from memory. The decoders run in a bounded pool a window ahead of
the model, and take turns with it for the cores (:mod:`vitdex.indexer.cores`): every
core decodes while the model waits for images, and only ``decode_busy`` threads (none by
default) start work while the consumer is away running a forward pass.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Generator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from vitdex.config import Settings
from vitdex.devices import resolve_device
from vitdex.errors import ImageError
from vitdex.indexer.cores import CoreSplit, core_split
from vitdex.indexer.images import DecodedImage, decode_image, read_photo

__all__ = ["Batch", "DecodeGate", "GateClosedError", "Prepared", "Reader", "Task"]


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


class GateClosedError(Exception):
    """A decode task was dropped because its stream was closed."""


class DecodeGate:
    """How many decode tasks may run at once: ``idle`` while the consumer waits for a
    result, ``busy`` while it is away (running the model on the last batch).

    A task that has started always finishes; the gate only holds back the next ones, so
    a forward pass shares its cores with at most ``busy`` decodes plus the stragglers.
    """

    def __init__(self, idle: int, busy: int) -> None:
        self.idle = max(1, idle)
        self.busy = max(0, busy)
        self._limit = self.idle
        self._running = 0
        self._closed = False
        self._cond = threading.Condition()

    @property
    def limit(self) -> int:
        """The number of tasks that may run now."""
        return self._limit

    def consumer_waiting(self, waiting: bool) -> None:
        """The consumer now waits for results (every core may decode) or went away."""
        with self._cond:
            self._limit = self.idle if waiting else self.busy
            if waiting:
                self._cond.notify_all()

    def close(self) -> None:
        """The consumer is gone: held-back tasks give up instead of decoding for no one."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def run(self, fn: Callable[[], Prepared]) -> Prepared:
        """``fn()`` once a slot is free; :class:`GateClosedError` once :meth:`close` was called."""
        with self._cond:
            while self._running >= self._limit and not self._closed:
                self._cond.wait()
            if self._closed:
                raise GateClosedError
            self._running += 1
        try:
            return fn()
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify()


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

    def split(self) -> CoreSplit:
        """The thread counts this reader decodes with (see :mod:`vitdex.indexer.cores`)."""
        device = resolve_device(self.settings.model.device)
        return core_split(self.settings.index.decode_workers, accelerator=device.type != "cpu")

    def stream(
        self, tasks: list[Task], reusable: dict[str, int]
    ) -> Generator[Prepared, None, None]:
        """Results of :meth:`prepare` as they finish, with a bounded read-ahead.

        While the caller holds a result (between a ``yield`` and the next request) it is
        taken to be busy with the model, and the decoders hold back (:class:`DecodeGate`).
        """
        window = max(4, 3 * self.settings.model.batch_size)
        split = self.split()
        gate = DecodeGate(split.decode_idle, split.decode_busy)
        pending: set[Future[Prepared]] = set()
        queue = iter(tasks)
        with ThreadPoolExecutor(split.pool_size, thread_name_prefix="vitdex-decode") as pool:
            try:
                while True:
                    while len(pending) < window:
                        task = next(queue, None)
                        if task is None:
                            break
                        pending.add(pool.submit(gate.run, _bind(self.prepare, task, reusable)))
                    if not pending:
                        return
                    t0 = time.perf_counter()
                    gate.consumer_waiting(True)
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    self.timings["wait_decode"] += time.perf_counter() - t0
                    for fut in done:
                        gate.consumer_waiting(False)
                        yield fut.result()
                        gate.consumer_waiting(True)
            finally:
                for fut in pending:
                    fut.cancel()
                # Held-back workers must give up, or the pool's shutdown waits on them.
                gate.close()


def _bind(
    fn: Callable[[Task, dict[str, int]], Prepared], task: Task, reusable: dict[str, int]
) -> Callable[[], Prepared]:
    return lambda: fn(task, reusable)
