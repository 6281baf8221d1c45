"""The last stages of indexing: embed a batch, then write it to SQL and the vector stores.

The order within a batch is what crash safety rests on (see :mod:`vitdex.indexer.pipeline`):
the SQL rows are flushed but not committed, the stores written (durable when ``upsert``
returns), and only then the transaction commits.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from vitdex.db import jobs as job_sql
from vitdex.db import repo
from vitdex.db.models import Space
from vitdex.indexer.embedder import Embedder
from vitdex.indexer.heads import label_new_vectors
from vitdex.indexer.report import IndexReport, job_counts, job_done
from vitdex.indexer.stages import Batch, Prepared
from vitdex.vectors.store import VectorStore

__all__ = ["TOP_LABELS", "BatchWriter", "Reusable"]

#: How many predicted labels each image keeps.
TOP_LABELS = 5


class Reusable:
    """The indexed images whose vectors a file with the same bytes can take over.

    ``by_sha`` maps sha256 → image id (what a reader looks up); the reverse map lets a
    re-embedded or failed image be forgotten in O(1).
    """

    def __init__(self, by_sha: dict[str, int]) -> None:
        self.by_sha = by_sha
        self._by_image = {image_id: sha for sha, image_id in by_sha.items()}

    def remember(self, sha: str | None, image_id: int) -> None:
        """``image_id`` now holds vectors of the bytes ``sha`` (the first such image stays
        the source)."""
        self.forget(image_id)
        if sha is not None:
            self.by_sha.setdefault(sha, image_id)
            if self.by_sha[sha] == image_id:
                self._by_image[image_id] = sha

    def forget(self, image_id: int) -> None:
        """``image_id`` is no source any more (it failed, or holds other bytes now)."""
        old = self._by_image.pop(image_id, None)
        if old is not None and self.by_sha.get(old) == image_id:
            del self.by_sha[old]


class BatchWriter:
    """Embeds and writes the batches of one run into one set of spaces."""

    def __init__(
        self,
        session: Session,
        spaces: list[Space],
        embedder: Embedder,
        store_of: Callable[[Space], VectorStore],
        timings: defaultdict[str, float],
    ) -> None:
        self.session = session
        self.spaces = spaces
        self.embedder = embedder
        self.store_of = store_of
        self.timings = timings

    def write(self, batch: Batch, report: IndexReport, reusable: Reusable) -> None:
        """Embed the decoded files, take the reused vectors, record everything; commits."""
        for item in batch.decoded:
            self.timings["read_hash"] += item.read_s
            self.timings["decode"] += item.decode_s
        ids, vectors, labels = self._vectors(batch)
        self._record(batch, report, ids, labels, reusable)
        self._store(batch, ids, vectors)
        self._label(ids, vectors)
        self._count(batch, report)

    def _vectors(
        self, batch: Batch
    ) -> tuple[list[int], dict[str, list[np.ndarray]], list[list[tuple[str, float]]]]:
        """Image ids with their vectors per space (embedded, then reused) and labels."""
        vectors: dict[str, list[np.ndarray]] = {s.name: [] for s in self.spaces}
        ids: list[int] = []
        labels: list[list[tuple[str, float]]] = []
        if batch.decoded:
            t0 = time.perf_counter()
            images = [item.decoded.image for item in batch.decoded if item.decoded]
            result = self.embedder.embed(images)
            self.timings["embed"] += time.perf_counter() - t0
            ids.extend(item.task.image_id for item in batch.decoded)
            for space in self.spaces:
                vectors[space.name].append(result.vectors[space.name])
            if result.logits is not None:
                labels = self.embedder.top_labels(result.logits, TOP_LABELS)
        if batch.reused:
            sources = np.asarray([src for _, src in batch.reused], dtype=np.int64)
            ids.extend(item.task.image_id for item, _ in batch.reused)
            for space in self.spaces:
                vectors[space.name].append(self.store_of(space).get(sources))
        return ids, vectors, labels

    def _record(
        self,
        batch: Batch,
        report: IndexReport,
        ids: list[int],
        labels: list[list[tuple[str, float]]],
        reusable: Reusable,
    ) -> None:
        # SQL first (flushed, not committed), then the store, then the commit: the store
        # write still precedes the commit that records it, and payload-carrying backends
        # read each image's final metadata from this very transaction.
        session = self.session
        t0 = time.perf_counter()
        model_id = self.embedder.model_id
        for n, item in enumerate(batch.decoded):
            image_id = item.task.image_id
            repo.record_indexed(session, image_id, _image_values(item))
            if labels:
                repo.set_labels(session, image_id, labels[n], model_id)
            reusable.remember(item.sha256, image_id)
        for item, source in batch.reused:
            repo.touch_image(session, item.task.image_id, item.task.size, item.task.mtime_ns)
            repo.copy_image_meta(session, source, item.task.image_id)
        repo.add_vector_rows(session, ids, [s.id for s in self.spaces])
        for item, source in batch.moved:
            # The file's row for its new path was inserted as pending; the old row
            # (with its vectors and labels) takes over the new path.
            repo.delete_images(session, [item.task.image_id])
            session.flush()
            repo.move_image(session, source, item.task.path, item.task.library_id)
            repo.touch_image(session, source, item.task.size, item.task.mtime_ns)
        for item in batch.failed:
            reusable.forget(item.task.image_id)
            repo.record_failed(
                session,
                item.task.image_id,
                item.error or "unknown error",
                sha256=item.sha256,
                size=item.task.size,
                mtime_ns=item.task.mtime_ns,
            )
            report.failures.append({"path": item.task.path, "error": item.error or ""})
        for item in batch.touched:
            repo.touch_image(session, item.task.image_id, item.task.size, item.task.mtime_ns)
        session.flush()
        self.timings["sql"] += time.perf_counter() - t0

    def _store(self, batch: Batch, ids: list[int], vectors: dict[str, list[np.ndarray]]) -> None:
        t0 = time.perf_counter()
        failed_ids = np.asarray([item.task.image_id for item in batch.failed], dtype=np.int64)
        id_array = np.asarray(ids, dtype=np.int64)
        moved_ids = np.asarray([source for _, source in batch.moved], dtype=np.int64)
        for space in self.spaces:
            store = self.store_of(space)
            wants_payloads = store.uses_payloads
            if len(id_array):
                store.upsert(
                    id_array,
                    np.concatenate(vectors[space.name]),
                    repo.payloads(self.session, ids) if wants_payloads else None,
                )
            if len(moved_ids) and wants_payloads:
                # Same vectors, new path: only backends that filter on payloads care.
                moved_payloads = repo.payloads(self.session, moved_ids.tolist())
                store.upsert(moved_ids, store.get(moved_ids), moved_payloads)
            if len(failed_ids):
                store.delete(failed_ids)
        self.timings["store"] += time.perf_counter() - t0

    def _label(self, ids: list[int], vectors: dict[str, list[np.ndarray]]) -> None:
        # Heads label new photos in the batch's own transaction (committed by _count), so
        # a photo is never indexed without the labels of the heads of its space.
        if not ids:
            return
        t0 = time.perf_counter()
        for space in self.spaces:
            label_new_vectors(self.session, space, ids, np.concatenate(vectors[space.name]))
        self.timings["heads"] += time.perf_counter() - t0

    def _count(self, batch: Batch, report: IndexReport) -> None:
        t0 = time.perf_counter()
        report.changed += sum(
            1
            for item in [*batch.decoded, *batch.failed]
            if item.task.known_sha is not None and item.task.known_sha != item.sha256
        )
        report.embedded += len(batch.decoded)
        report.reused += len(batch.reused)
        report.moved += len(batch.moved)
        report.failed += len(batch.failed)
        report.unchanged += len(batch.touched)
        if report.job_id is not None:
            job_sql.update_job(
                self.session, report.job_id, done=job_done(report), counts=job_counts(report)
            )
        self.session.commit()
        self.timings["sql"] += time.perf_counter() - t0


def _image_values(item: Prepared) -> dict[str, Any]:
    decoded = item.decoded
    assert decoded is not None
    exif = decoded.exif
    return {
        "sha256": item.sha256,
        "size": item.task.size,
        "mtime_ns": item.task.mtime_ns,
        "width": decoded.width,
        "height": decoded.height,
        "format": decoded.format,
        "taken_at": exif.taken_at,
        "camera_make": exif.camera_make,
        "camera_model": exif.camera_model,
        "orientation": exif.orientation,
        "gps_lat": exif.gps_lat,
        "gps_lon": exif.gps_lon,
    }
