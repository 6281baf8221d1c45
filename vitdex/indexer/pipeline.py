"""Indexing: scan → read + hash → decode → embed → write, batch by batch.

This module scans and orchestrates; reading and decoding run in
:mod:`vitdex.indexer.stages`, embedding and writing in :mod:`vitdex.indexer.writer`.

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

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import Settings
from vitdex.db import jobs as job_sql
from vitdex.db import repo
from vitdex.db.models import ImageStatus, JobState, Space, utcnow
from vitdex.db.recovery import recover_orphans
from vitdex.errors import ConfigError
from vitdex.indexer.embedder import Embedder
from vitdex.indexer.images import SUPPORTED_EXTENSIONS
from vitdex.indexer.repair import reconcile_space
from vitdex.indexer.report import IndexReport, NullProgress, ProgressSink, job_counts
from vitdex.indexer.scan import ScannedFile, scan
from vitdex.indexer.stages import Batch, Reader, Task
from vitdex.indexer.writer import BatchWriter, Reusable
from vitdex.paths import photo_roots
from vitdex.vectors.factory import drop_store, open_store
from vitdex.vectors.lease import WriteLease
from vitdex.vectors.store import VectorStore

# IndexReport and ProgressSink are part of the indexer's interface, defined in .report.
__all__ = ["IndexReport", "Indexer", "ProgressSink"]

log = logging.getLogger(__name__)


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
        if embedder.home is None:
            # Exports live in this catalog's home (--home does not reach the environment).
            embedder.home = settings.storage.home
        self.progress: ProgressSink = progress or NullProgress()
        self.should_stop = should_stop or (lambda: False)
        self._stores: dict[str, VectorStore] = {}
        self._timings: defaultdict[str, float] = defaultdict(float)
        #: Library id → the folders its photos may be read from (vitdex.paths).
        self._within: dict[int, tuple[Path, ...]] = {}

    # ------------------------------------------------------------------ set-up

    def _store(self, space: Space) -> VectorStore:
        store = self._stores.get(space.name)
        if store is None:
            store = open_store(self.settings, space.name, space.dim, space.metric)
            self._stores[space.name] = store
        return store

    def _current_names(self) -> list[str]:
        """The spaces this run fills, named before the model loads where its config.json
        is on this machine; else the layer specs as given (a relative depth then matches
        no space, its images count as incomplete, and the model loads to tell)."""
        known = self.embedder.known_spaces()
        return [space.name for space in known] if known is not None else self.embedder.spaces

    def _existing_spaces(self, session: Session, names: list[str]) -> list[Space]:
        """The spaces ``names`` already in the catalog; refuses a different model early."""
        model_id = self.embedder.model_id
        found = []
        for name in names:
            space = next((s for s in repo.list_spaces(session) if s.name == name), None)
            if space is None:
                continue
            if space.model_id != model_id:
                repo.check_space_matches(space, {**_space_dict(space), "model_id": model_id})
            found.append(space)
        return found

    def _agreement(self) -> float:
        """The embedder's least cosine to torch fp32 on the probe photos (1.0 for torch
        fp32 itself, known without loading the model)."""
        if self.embedder.runtime == "torch" and self.embedder.precision == "fp32":
            return 1.0
        return float(self.embedder.agreement["min"])

    def _check_agreement(self, spaces: list[Space]) -> None:
        """Refuse, before any photo is read, to write into a space that asks more
        agreement with torch fp32 than this runtime and precision reach."""
        if spaces:
            agreement = self._agreement()
            for space in spaces:
                repo.check_agreement(space, self.embedder.runtime_label, agreement)

    def _prepare_spaces(self, session: Session, reembed: bool) -> list[Space]:
        """Load the model and create or verify the current spaces."""
        t0 = time.perf_counter()
        specs = self.embedder.space_specs()  # loads the model on first use
        # The first forward of a batch shape builds its kernels (seconds for ViT-B on a
        # CPU): pay it here, with the load, rather than inside the first batch.
        self.embedder.warm_up()
        self._timings["load_model"] += time.perf_counter() - t0
        agreement = self._agreement()
        bound = self.embedder.choice.bound
        spaces = []
        for spec in specs:
            # A new space asks of later writers what its first runtime guarantees.
            spec_dict = {
                **asdict(spec),
                "min_agreement": bound,
                "runtime": self.embedder.runtime_label,
            }
            if reembed:
                existing = next((s for s in repo.list_spaces(session) if s.name == spec.name), None)
                if existing is not None:
                    try:
                        repo.check_space_matches(existing, spec_dict)
                        repo.check_agreement(existing, self.embedder.runtime_label, agreement)
                    except Exception:
                        log.warning("re-embedding space %s from scratch", spec.name)
                        repo.delete_space(session, existing.id)
                        session.flush()
                        stale = self._stores.pop(spec.name, None)
                        if stale is not None:
                            stale.close()
                        drop_store(self.settings, spec.name)
            space = repo.ensure_space(session, spec_dict)
            repo.check_agreement(space, self.embedder.runtime_label, agreement)
            spaces.append(space)
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
                job_id = job_sql.create_foreground_job(
                    session, "index", {"paths": report.libraries, "reembed": reembed}
                ).id
            else:
                job_sql.update_job(session, job_id, state=JobState.RUNNING, started_at=utcnow())
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
                job_sql.update_job(session, job_id, counts=job_counts(report))
                job_sql.finish_job(session, job_id, state, error)
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
        names = self._current_names()
        spaces = [] if reembed else self._existing_spaces(session, names)
        session.commit()
        self._check_agreement(spaces)
        self._start_check(session, spaces, report, lease)

        tasks: list[Task] = []
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
                complete = old.vectors >= len(names) and not reembed
                same_stat = old.size == found.size and old.mtime_ns == found.mtime_ns
                if same_stat and old.status == ImageStatus.INDEXED and complete:
                    report.unchanged += 1
                elif same_stat and old.status == ImageStatus.FAILED and not retry_failed:
                    report.unchanged += 1
                else:
                    tasks.append(
                        Task(
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
                Task(ids[f.path], f.path, f.size, f.mtime_ns, None, False, lib.id)
                for f in new_files
            )
            report.new += len(new_files)
            lib.last_scan_at = utcnow()
            session.commit()
        self._timings["scan"] += time.perf_counter() - t0

        if tasks and not self.should_stop():
            spaces = self._prepare_spaces(session, reembed)
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

    def _process(
        self,
        session: Session,
        spaces: list[Space],
        tasks: list[Task],
        gone: dict[int, str],
        report: IndexReport,
    ) -> None:
        """Read, decode, embed and write ``tasks`` batch by batch; a file whose bytes an
        indexed image already has takes over its vectors, or its row when that image's
        file is ``gone`` (moved)."""
        reusable = Reusable(repo.reusable_by_sha(session, [s.id for s in spaces]))
        self.progress.begin(len(tasks))
        if report.job_id is not None:
            job_sql.update_job(session, report.job_id, total=len(tasks))
            session.commit()
        height, width = self.embedder.input_size
        # The decoder takes (width, height).
        reader = Reader(self.settings, self._within, (width, height), self._timings)
        writer = BatchWriter(session, spaces, self.embedder, self._store, self._timings)
        batch = Batch()
        batch_size = self.settings.model.batch_size
        retry: list[Task] = []

        def flush() -> None:
            nonlocal batch
            if len(batch):
                writer.write(batch, report, reusable)
                self.progress.advance(len(batch))
                batch = Batch()

        stream = reader.stream(tasks, reusable.by_sha)
        for item in stream:
            if item.error is not None:
                batch.failed.append(item)
            elif item.unchanged:
                batch.touched.append(item)
            elif item.reuse_from is not None:
                source = item.reuse_from
                if reusable.by_sha.get(item.sha256 or "") != source:
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
            for item in reader.stream(retry, {}):
                (batch.failed if item.error else batch.decoded).append(item)
                if len(batch.decoded) >= batch_size:
                    flush()
            flush()


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
