"""Indexing: scan → read + hash → decode → embed → write, batch by batch.

Crash safety rests on one order, kept for every batch: vectors are written to the store
(durable when ``upsert`` returns) *before* the SQL rows that record them commit. After a
kill at any moment the store may hold vectors the catalog does not know of, never the
reverse for long: :func:`reconcile_space` at the start of the next run deletes such strays
and sends images whose vectors went missing back to ``pending``. New files are inserted
as ``pending`` rows before any work on them, so a re-run picks up exactly where the last
one stopped.

A live writer's batch looks exactly like such damage, so a run holds the writing lease
(:mod:`vitdex.vectors.lease`) shared from its start-up check to its end, and repairs at
start only when it gets the lease exclusively, i.e. when no other writer runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import Settings
from vitdex.db import repo
from vitdex.db.models import ImageStatus, JobState, Space, utcnow
from vitdex.db.recovery import recover_orphans
from vitdex.errors import ConfigError, ImageError
from vitdex.indexer.embedder import Embedder
from vitdex.indexer.images import SUPPORTED_EXTENSIONS, DecodedImage, decode_image, read_photo
from vitdex.indexer.models import normalize_model_id
from vitdex.indexer.repair import reconcile_space
from vitdex.indexer.scan import ScannedFile, scan
from vitdex.paths import photo_roots
from vitdex.vectors.factory import drop_store, open_store
from vitdex.vectors.lease import WriteLease
from vitdex.vectors.store import VectorStore

log = logging.getLogger(__name__)

TOP_LABELS = 5


class ProgressSink(Protocol):
    """Receives progress; the CLI draws a bar, jobs write it to SQL."""

    def scanning(self, files: int) -> None:
        """``files`` image files found so far."""

    def begin(self, total: int) -> None:
        """``total`` files need work (hashing, maybe embedding)."""

    def advance(self, n: int) -> None:
        """``n`` more files are done."""


class NullProgress:
    """Progress that goes nowhere."""

    def scanning(self, files: int) -> None:
        """Ignore."""

    def begin(self, total: int) -> None:
        """Ignore."""

    def advance(self, n: int) -> None:
        """Ignore."""


@dataclass
class IndexReport:
    """What an index run did; ``vitdex index --json`` prints it."""

    libraries: list[str] = field(default_factory=list)
    scanned: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    embedded: int = 0
    reused: int = 0
    moved: int = 0
    failed: int = 0
    deleted: int = 0
    repaired: int = 0
    #: The start-up check found another writer running and left the stores alone.
    repair_skipped: bool = False
    cancelled: bool = False
    elapsed: float = 0.0
    images_per_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    spaces: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    job_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)


@dataclass(slots=True)
class _Task:
    image_id: int
    path: str
    size: int
    mtime_ns: int
    known_sha: str | None
    complete: bool  # already has a vector in every current space
    library_id: int
    allow_reuse: bool = True


@dataclass(slots=True)
class _Prepared:
    task: _Task
    sha256: str | None = None
    decoded: DecodedImage | None = None
    error: str | None = None
    reuse_from: int | None = None
    unchanged: bool = False
    read_s: float = 0.0
    decode_s: float = 0.0


@dataclass
class _Batch:
    decoded: list[_Prepared] = field(default_factory=list)
    reused: list[tuple[_Prepared, int]] = field(default_factory=list)
    failed: list[_Prepared] = field(default_factory=list)
    touched: list[_Prepared] = field(default_factory=list)
    moved: list[tuple[_Prepared, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return (
            len(self.decoded)
            + len(self.reused)
            + len(self.failed)
            + len(self.touched)
            + len(self.moved)
        )


class Indexer:
    """Runs index passes over folders with one embedder and one set of stores."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        embedder: Embedder,
        *,
        progress: ProgressSink | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.embedder = embedder
        self.progress: ProgressSink = progress or NullProgress()
        self.should_stop = should_stop or (lambda: False)
        self._stores: dict[str, VectorStore] = {}
        self._timings: dict[str, float] = defaultdict(float)
        self._min_size = (0, 0)
        #: Library id → the folders its photos may be read from (vitdex.paths).
        self._within: dict[int, tuple[Path, ...]] = {}

    # ------------------------------------------------------------------ set-up

    def _store(self, space: Space) -> VectorStore:
        store = self._stores.get(space.name)
        if store is None:
            store = open_store(self.settings, space.name, space.dim, space.metric)
            self._stores[space.name] = store
        return store

    def _existing_spaces(self, session: Session) -> list[Space]:
        """Current spaces already in the catalog; refuses a different model early."""
        model_id = normalize_model_id(self.settings.model.model)
        found = []
        for name in self.settings.model.spaces:
            space = next((s for s in repo.list_spaces(session) if s.name == name), None)
            if space is None:
                continue
            if space.model_id != model_id:
                repo.check_space_matches(space, {**_space_dict(space), "model_id": model_id})
            found.append(space)
        return found

    def _prepare_spaces(self, session: Session, reembed: bool) -> list[Space]:
        """Load the model and create or verify the current spaces."""
        t0 = time.perf_counter()
        specs = self.embedder.space_specs()  # loads the model on first use
        self._timings["load_model"] += time.perf_counter() - t0
        spaces = []
        for spec in specs:
            spec_dict = asdict(spec)
            if reembed:
                existing = next((s for s in repo.list_spaces(session) if s.name == spec.name), None)
                if existing is not None:
                    try:
                        repo.check_space_matches(existing, spec_dict)
                    except Exception:
                        log.warning("re-embedding space %s from scratch", spec.name)
                        repo.delete_space(session, existing.id)
                        session.flush()
                        stale = self._stores.pop(spec.name, None)
                        if stale is not None:
                            stale.close()
                        drop_store(self.settings, spec.name)
            spaces.append(repo.ensure_space(session, spec_dict))
        session.commit()
        return spaces

    # ------------------------------------------------------------------ run

    def run(
        self,
        paths: Sequence[Path],
        *,
        reembed: bool = False,
        retry_failed: bool = False,
        job_id: int | None = None,
    ) -> IndexReport:
        """Index ``paths`` (folders); returns what was done. Safe to interrupt at any time.

        Progress and the outcome go to a job row: ``job_id``'s (a queued job, set running
        here) or a new one.
        """
        started = time.perf_counter()
        report = IndexReport()
        self._timings = defaultdict(float)
        roots = []
        for path in paths:
            resolved = Path(path).expanduser()
            if not resolved.is_dir():
                raise ConfigError(f"not a folder: {path}")
            roots.append(resolved.resolve())
        report.libraries = [str(r) for r in roots]

        with self.sessions() as session:
            if job_id is None:
                # Close the rows of earlier runs whose process died (killed, power cut):
                # this run takes over their work, and they would read running for ever.
                recover_orphans(session, stale_after_s=self.settings.jobs.job_stale_after_s)
                job_id = repo.create_job(
                    session, "index", {"paths": report.libraries, "reembed": reembed}
                ).id
            else:
                repo.update_job(session, job_id, state=JobState.RUNNING, started_at=utcnow())
            report.job_id = job_id
            session.commit()
            lease = WriteLease.of(self.settings)
            try:
                self._run(session, roots, report, lease, reembed=reembed, retry_failed=retry_failed)
                state = JobState.CANCELLED if report.cancelled else JobState.SUCCEEDED
                error = None
            except KeyboardInterrupt:
                report.cancelled = True
                state, error = JobState.CANCELLED, "interrupted"
                raise
            except BaseException as exc:
                state, error = JobState.FAILED, str(exc)
                raise
            finally:
                session.rollback()
                # Whatever the run wrote is committed or, rolled back, a true stray now.
                lease.release()
                for store in self._stores.values():
                    store.flush()
                report.elapsed = time.perf_counter() - started
                work = report.embedded + report.reused
                report.images_per_s = work / report.elapsed if report.elapsed > 0 else 0.0
                report.timings = {k: round(v, 4) for k, v in sorted(self._timings.items())}
                repo.update_job(session, job_id, counts=_job_counts(report))
                repo.finish_job(session, job_id, state, error)
                session.commit()
        return report

    def _run(
        self,
        session: Session,
        roots: list[Path],
        report: IndexReport,
        lease: WriteLease,
        *,
        reembed: bool,
        retry_failed: bool,
    ) -> None:
        spaces = [] if reembed else self._existing_spaces(session)
        session.commit()
        self._start_check(session, spaces, report, lease)

        tasks: list[_Task] = []
        gone: dict[int, str] = {}  # image id → old path, for files no longer there
        t0 = time.perf_counter()
        for root in roots:
            lib = repo.library_for(session, str(root))
            self._within[lib.id] = photo_roots(lib.root, self.settings.api.allowed_roots)
            known = repo.known_images(session, str(root), [s.id for s in spaces])
            seen: set[str] = set()
            new_files: list[ScannedFile] = []
            for found in scan(
                root,
                SUPPORTED_EXTENSIONS,
                follow_symlinks=self.settings.index.follow_symlinks,
                on_file=self.progress.scanning,
                within=self._within[lib.id],
            ):
                seen.add(found.path)
                report.scanned += 1
                old = known.get(found.path)
                if old is None:
                    new_files.append(found)
                    continue
                complete = old.vectors >= len(self.settings.model.spaces) and not reembed
                same_stat = old.size == found.size and old.mtime_ns == found.mtime_ns
                if same_stat and old.status == ImageStatus.INDEXED and complete:
                    report.unchanged += 1
                elif same_stat and old.status == ImageStatus.FAILED and not retry_failed:
                    report.unchanged += 1
                else:
                    tasks.append(
                        _Task(
                            old.id,
                            found.path,
                            found.size,
                            found.mtime_ns,
                            old.sha256,
                            complete and old.status == ImageStatus.INDEXED,
                            lib.id,
                        )
                    )
            for path, old in known.items():
                if path not in seen and old.status != ImageStatus.MISSING:
                    gone[old.id] = path
            ids = repo.insert_pending(
                session, lib.id, [(f.path, f.size, f.mtime_ns) for f in new_files]
            )
            tasks.extend(
                _Task(ids[f.path], f.path, f.size, f.mtime_ns, None, False, lib.id)
                for f in new_files
            )
            report.new += len(new_files)
            lib.last_scan_at = utcnow()
            session.commit()
        self._timings["scan"] += time.perf_counter() - t0

        if tasks and not self.should_stop():
            spaces = self._prepare_spaces(session, reembed)
            height, width = self.embedder.input_size
            self._min_size = (width, height)  # the decoder takes (width, height)
            self._process(session, spaces, tasks, gone, report)
        report.spaces = [s.name for s in spaces]

        if gone and not report.cancelled:
            t0 = time.perf_counter()
            gone_ids = sorted(gone)
            id_array = np.asarray(gone_ids, dtype=np.int64)
            for space in repo.list_spaces(session):
                self._store(space).delete(id_array)
            repo.mark_missing(session, gone_ids)
            session.commit()
            report.deleted += len(gone_ids)
            self._timings["delete"] += time.perf_counter() - t0

    def _start_check(
        self, session: Session, spaces: list[Space], report: IndexReport, lease: WriteLease
    ) -> None:
        """Repair what a killed run left behind, unless another writer runs; then hold
        ``lease`` as a writer until the run ends."""
        if lease.try_exclusive():
            for space in spaces:
                strays, missing = reconcile_space(session, space, self._store(space), lease)
                report.repaired += strays + missing
            session.commit()
        elif spaces:
            report.repair_skipped = True
            log.warning(
                "another vitdex process is writing to this catalog: start-up check skipped "
                "(its vectors in flight would look like strays)"
            )
        lease.share()

    # ------------------------------------------------------------------ stages

    def _prepare(self, task: _Task, reusable: dict[str, int]) -> _Prepared:
        """Runs in a worker thread: read, hash, and decode unless the vectors exist."""
        out = _Prepared(task)
        t0 = time.perf_counter()
        try:
            # A link out of the library (or swapped in since the scan) is refused here.
            data = read_photo(task.path, self._within[task.library_id])
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
                min_size=self._min_size,
            )
        except ImageError as exc:
            out.error = exc.message
        out.decode_s = time.perf_counter() - t1
        return out

    def _workers(self) -> int:
        configured = self.settings.index.decode_workers
        if configured:
            return configured
        # One decoder per core the model leaves over, at least one: decoding a
        # draft-mode JPEG costs a fraction of the forward pass.
        return max(1, (os.cpu_count() or 2) - 1)

    def _prepared_stream(
        self, tasks: list[_Task], reusable: dict[str, int]
    ) -> Generator[_Prepared, None, None]:
        """Results of :meth:`_prepare` as they finish, with a bounded read-ahead."""
        window = max(4, 3 * self.settings.model.batch_size)
        pending: set[Future[_Prepared]] = set()
        queue = iter(tasks)
        with ThreadPoolExecutor(self._workers(), thread_name_prefix="vitdex-decode") as pool:
            try:
                while True:
                    while len(pending) < window:
                        task = next(queue, None)
                        if task is None:
                            break
                        pending.add(pool.submit(self._prepare, task, reusable))
                    if not pending:
                        return
                    t0 = time.perf_counter()
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    self._timings["wait_decode"] += time.perf_counter() - t0
                    for fut in done:
                        yield fut.result()
            finally:
                for fut in pending:
                    fut.cancel()

    def _process(
        self,
        session: Session,
        spaces: list[Space],
        tasks: list[_Task],
        gone: dict[int, str],
        report: IndexReport,
    ) -> None:
        space_ids = [s.id for s in spaces]
        reusable = repo.reusable_by_sha(session, space_ids)
        by_image = {image_id: sha for sha, image_id in reusable.items()}
        self.progress.begin(len(tasks))
        if report.job_id is not None:
            repo.update_job(session, report.job_id, total=len(tasks))
            session.commit()
        batch = _Batch()
        batch_size = self.settings.model.batch_size
        retry: list[_Task] = []

        def flush() -> None:
            nonlocal batch
            if len(batch):
                self._write_batch(session, spaces, batch, report, reusable, by_image)
                self.progress.advance(len(batch))
                batch = _Batch()

        stream = self._prepared_stream(tasks, reusable)
        for item in stream:
            if item.error is not None:
                batch.failed.append(item)
            elif item.unchanged:
                batch.touched.append(item)
            elif item.reuse_from is not None:
                source = item.reuse_from
                if reusable.get(item.sha256 or "") != source:
                    # The source was re-embedded with other content meanwhile: decode.
                    item.task.allow_reuse = False
                    retry.append(item.task)
                elif source in gone:
                    gone.pop(source)
                    batch.moved.append((item, source))
                else:
                    batch.reused.append((item, source))
            else:
                batch.decoded.append(item)
            if len(batch.decoded) >= batch_size or len(batch) >= 4 * batch_size:
                flush()
                if self.should_stop():
                    report.cancelled = True
                    break
        if report.cancelled:
            # Close the generator so its worker pool stops before we return.
            stream.close()
            return
        flush()
        if retry:
            for item in self._prepared_stream(retry, {}):
                (batch.failed if item.error else batch.decoded).append(item)
                if len(batch.decoded) >= batch_size:
                    flush()
            flush()

    def _write_batch(
        self,
        session: Session,
        spaces: list[Space],
        batch: _Batch,
        report: IndexReport,
        reusable: dict[str, int],
        by_image: dict[int, str],
    ) -> None:
        for item in batch.decoded:
            self._timings["read_hash"] += item.read_s
            self._timings["decode"] += item.decode_s
        vectors: dict[str, list[np.ndarray]] = {s.name: [] for s in spaces}
        ids: list[int] = []
        labels: list[list[tuple[str, float]]] = []
        if batch.decoded:
            t0 = time.perf_counter()
            images = [item.decoded.image for item in batch.decoded if item.decoded]
            result = self.embedder.embed(images)
            self._timings["embed"] += time.perf_counter() - t0
            ids.extend(item.task.image_id for item in batch.decoded)
            for space in spaces:
                vectors[space.name].append(result.vectors[space.name])
            if result.logits is not None:
                labels = self.embedder.top_labels(result.logits, TOP_LABELS)
        if batch.reused:
            sources = np.asarray([src for _, src in batch.reused], dtype=np.int64)
            ids.extend(item.task.image_id for item, _ in batch.reused)
            for space in spaces:
                vectors[space.name].append(self._store(space).get(sources))

        # SQL first (flushed, not committed), then the store, then the commit: the store
        # write still precedes the commit that records it, and payload-carrying backends
        # read each image's final metadata from this very transaction.
        t0 = time.perf_counter()
        model_id = self.embedder.model_id
        space_ids = [s.id for s in spaces]
        for n, item in enumerate(batch.decoded):
            assert item.decoded is not None
            image_id = item.task.image_id
            repo.record_indexed(session, image_id, _image_values(item))
            if labels:
                repo.set_labels(session, image_id, labels[n], model_id)
            _remember(reusable, by_image, item.sha256, image_id)
        for item, source in batch.reused:
            repo.touch_image(session, item.task.image_id, item.task.size, item.task.mtime_ns)
            repo.copy_image_meta(session, source, item.task.image_id)
        repo.add_vector_rows(session, ids, space_ids)
        for item, source in batch.moved:
            # The file's row for its new path was inserted as pending; the old row
            # (with its vectors and labels) takes over the new path.
            repo.delete_images(session, [item.task.image_id])
            session.flush()
            repo.move_image(session, source, item.task.path, item.task.library_id)
            repo.touch_image(session, source, item.task.size, item.task.mtime_ns)
        for item in batch.failed:
            _forget(reusable, by_image, item.task.image_id)
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
        self._timings["sql"] += time.perf_counter() - t0

        t0 = time.perf_counter()
        failed_ids = np.asarray([item.task.image_id for item in batch.failed], dtype=np.int64)
        id_array = np.asarray(ids, dtype=np.int64)
        moved_ids = np.asarray([source for _, source in batch.moved], dtype=np.int64)
        for space in spaces:
            store = self._store(space)
            wants_payloads = store.uses_payloads
            if len(id_array):
                store.upsert(
                    id_array,
                    np.concatenate(vectors[space.name]),
                    repo.payloads(session, ids) if wants_payloads else None,
                )
            if len(moved_ids) and wants_payloads:
                # Same vectors, new path: only backends that filter on payloads care.
                store.upsert(
                    moved_ids, store.get(moved_ids), repo.payloads(session, moved_ids.tolist())
                )
            if len(failed_ids):
                store.delete(failed_ids)
        self._timings["store"] += time.perf_counter() - t0

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
            repo.update_job(
                session,
                report.job_id,
                done=_job_done(report),
                counts=_job_counts(report),
            )
        session.commit()
        self._timings["sql"] += time.perf_counter() - t0


def _remember(
    reusable: dict[str, int], by_image: dict[int, str], sha: str | None, image_id: int
) -> None:
    _forget(reusable, by_image, image_id)
    if sha is not None:
        reusable.setdefault(sha, image_id)
        if reusable[sha] == image_id:
            by_image[image_id] = sha


def _forget(reusable: dict[str, int], by_image: dict[int, str], image_id: int) -> None:
    old = by_image.pop(image_id, None)
    if old is not None and reusable.get(old) == image_id:
        del reusable[old]


def _image_values(item: _Prepared) -> dict[str, Any]:
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


def _space_dict(space: Space) -> dict[str, Any]:
    return {
        "name": space.name,
        "model_id": space.model_id,
        "model_revision": space.model_revision,
        "layer": space.layer,
        "preprocessing": dict(space.preprocessing),
        "dim": space.dim,
        "metric": space.metric,
    }


def _job_done(report: IndexReport) -> int:
    return report.embedded + report.reused + report.moved + report.failed


def _job_counts(report: IndexReport) -> dict[str, Any]:
    keys = ("scanned", "new", "changed", "unchanged", "embedded", "reused", "moved")
    counts: dict[str, Any] = {key: getattr(report, key) for key in keys}
    counts.update(failed=report.failed, deleted=report.deleted, repaired=report.repaired)
    return counts
