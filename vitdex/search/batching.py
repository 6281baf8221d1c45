"""Concurrent single-image queries share forward passes.

Each API request embeds one upload; run one by one they leave batch throughput on the
table (on a GPU by far, on a CPU by ~10%). A :class:`MicroBatcher` runs requests on one
thread: while a batch is in the model, new requests queue up and go together in the
next pass. A lone request never waits for company, so it costs no latency.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
from PIL import Image

from vitdex.indexer.embedder import Embedder

log = logging.getLogger(__name__)


@dataclass
class OneResult:
    """The vectors (one per space) and logits of one image."""

    vectors: dict[str, np.ndarray]
    logits: np.ndarray | None


class MicroBatcher:
    """Embeds images one call at a time, batching calls that overlap."""

    def __init__(self, embedder: Embedder, *, max_batch: int | None = None) -> None:
        self.embedder = embedder
        self.max_batch = max_batch or embedder.batch_size
        self._queue: queue.SimpleQueue[tuple[Image.Image, Future[OneResult]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        #: Size of every batch run so far (bounded), for metrics and tests.
        self.batch_sizes: list[int] = []

    def embed_one(self, image: Image.Image) -> OneResult:
        """Embed one RGB image; blocks until its batch has run."""
        self._ensure_thread()
        future: Future[OneResult] = Future()
        self._queue.put((image, future))
        return future.result()

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="vitdex-embed-batcher", daemon=True
                )
                self._thread.start()

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._run(batch)

    def _run(self, batch: list[tuple[Image.Image, Future[OneResult]]]) -> None:
        if len(self.batch_sizes) < 10_000:
            self.batch_sizes.append(len(batch))
        try:
            result = self.embedder.embed([image for image, _ in batch])
        except BaseException as exc:  # every waiter gets the error, the loop lives on
            for _, future in batch:
                future.set_exception(exc)
            return
        for i, (_, future) in enumerate(batch):
            future.set_result(
                OneResult(
                    vectors={name: v[i] for name, v in result.vectors.items()},
                    logits=None if result.logits is None else result.logits[i],
                )
            )
