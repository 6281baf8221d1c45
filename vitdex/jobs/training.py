"""Train jobs: the function a queue runs for a job row of kind ``train``.

It takes the settings of the process that runs it and the job id (params
``{"run_id"}``), so rq can enqueue it by dotted path from a process that never imports
torch. One job exports the run's dataset (first time only), trains or resumes from the newest
checkpoint, then converts the result to a single file and registers it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import Settings
from vitdex.db import jobs as job_sql
from vitdex.db import training as run_sql
from vitdex.db.models import JobState
from vitdex.errors import ConfigError
from vitdex.jobs.runner import CancelPoller, progress_writer, run_job_guarded

log = logging.getLogger(__name__)

#: Seconds between two progress writes to SQL (phase changes are written at once).
PROGRESS_EVERY_S = 1.0
#: Seconds between two reads of ``cancel_requested``.
CANCEL_POLL_S = 1.0

#: ``on_progress(event)``: ``{"phase", "step", "total_steps", "loss", "it_per_s", ...}``.
ProgressCallback = Callable[[dict[str, Any]], None]


class _ProgressWriter:
    """Writes training progress to the job and run rows, at most every PROGRESS_EVERY_S."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        job_id: int,
        run_id: int,
        forward: ProgressCallback | None,
    ) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.run_id = run_id
        self.forward = forward
        self._last_write = float("-inf")
        self._last_phase: str | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        if self.forward is not None:
            self.forward(event)
        now = time.monotonic()
        phase = event.get("phase")
        if phase == self._last_phase and now - self._last_write < PROGRESS_EVERY_S:
            return
        self._last_write, self._last_phase = now, phase
        counts = {
            key: event.get(key)
            for key in ("phase", "stage", "loss", "it_per_s", "lr", "eta_s", "message")
            if event.get(key) is not None
        }
        with self.sessions() as session:
            job_sql.set_progress(
                session,
                self.job_id,
                done=int(event.get("step") or 0),
                total=int(event.get("total_steps") or 0) or None,
                counts=counts,
            )
            if event.get("step") is not None:
                run_sql.set_run_progress(
                    session, self.run_id, step=int(event["step"]), loss=event.get("loss")
                )


def run_train_job(
    settings: Settings, job_id: int, on_progress: ProgressCallback | None = None
) -> None:
    """Run the train job ``job_id``: export (once), train or resume, convert, register.

    ``on_progress`` (used by the CLI's progress bar) receives every event the SQL rows
    get, unthrottled. A cancel request stops training at its next step after saving a
    checkpoint: the run is left ``cancelled`` and ``vitdex train resume`` continues it.
    """
    from vitdex.training.determinism import reproducible_cpu_math

    # The CLI and `vitdex worker` both come through here: same bits on every resume.
    reproducible_cpu_math()
    run_id: int | None = None

    def work(sessions: sessionmaker[Session]) -> None:
        nonlocal run_id
        with sessions() as session:
            params = dict(job_sql.get_job(session, job_id).params or {})
        found = params.get("run_id")
        if not isinstance(found, int):
            raise ConfigError(f"train job {job_id} names no run")
        run_id = found
        _train_run(settings, sessions, job_id, run_id, on_progress)

    def follow(session: Session, state: JobState, error: str | None) -> None:
        # The run takes the state its job was given: cancelled, failed, or queued for
        # rq's retry (not failed while its job waits to run again).
        if run_id is not None:
            run_sql.set_run_state(session, run_id, state, error=error)

    run_job_guarded(settings, job_id, work, what="train", on_end=follow)


def _train_run(
    settings: Settings,
    sessions: sessionmaker[Session],
    job_id: int,
    run_id: int,
    on_progress: ProgressCallback | None,
) -> None:
    from vitdex.training.bases import get_version, version_of
    from vitdex.training.config import TrainConfig
    from vitdex.training.dreambooth import TrainProgress, train
    from vitdex.training.export import export_dataset, exported_instance_hash
    from vitdex.training.losses import record_loss
    from vitdex.training.registry import Provenance, convert_and_register
    from vitdex.training.runs import checkpoint_name

    with sessions() as session:
        run = run_sql.set_run_state(session, run_id, JobState.RUNNING, job_id=job_id)
        config = TrainConfig.from_dict(run.config)
        out = Path(run.output_dir)
        dataset_id = run.dataset_id
        dataset_name: str | None = None
        if dataset_id is not None:
            from vitdex.db.datasets import get_dataset

            dataset_name = get_dataset(session, dataset_id).name
    progress = _ProgressWriter(sessions, job_id, run_id, on_progress)
    stop = CancelPoller(sessions, job_id, interval=CANCEL_POLL_S)

    data = out / "data"
    if not (data / "dataset.toml").is_file():
        if dataset_id is None:
            raise ConfigError(f"run {run_id} has no dataset (it was deleted) and no exported data")
        version = version_of(config.base_model, config.version)
        resolution = config.resolution or (get_version(version).resolution if version else 512)

        def exported(done: int, total: int) -> None:
            progress(
                {
                    "phase": "exporting",
                    "step": 0,
                    "total_steps": config.total_steps,
                    "message": f"{done}/{total} images",
                }
            )
            if stop():
                raise job_sql.JobCancelled()

        export_dataset(
            settings, sessions, dataset_id, data, resolution=resolution, progress=exported
        )

    def reported(event: TrainProgress) -> None:
        if event.phase == "training" and event.loss is not None:
            record_loss(out, event.step, event.loss)  # every step: the run page's curve
        progress(event.to_dict())

    result = train(config, out, on_progress=reported, should_stop=stop)
    if not result.completed:
        raise job_sql.JobCancelled()
    with sessions() as session:
        run_sql.set_run_state(
            session,
            run_id,
            JobState.RUNNING,
            step=result.steps,
            loss=result.final_loss,
            version=result.config.version,
        )
        existing = run_sql.checkpoint_of_run(session, run_id)
    if existing is None:
        progress(
            {
                "phase": "converting",
                "step": result.steps,
                "total_steps": config.total_steps,
                "loss": result.final_loss,
            }
        )
        name = checkpoint_name(dataset_name, run_id)
        convert_and_register(
            sessions,
            run_id=run_id,
            name=name,
            out=out / f"{name}.safetensors",
            origin=Provenance(
                # The images trained on, as exported; not the dataset as edited since.
                dataset_hash=exported_instance_hash(data),
                config=result.config.to_dict(),
                steps=result.steps,
                final_loss=result.final_loss,
            ),
        )
    with sessions() as session:
        run_sql.set_run_state(
            session, run_id, JobState.SUCCEEDED, step=result.steps, loss=result.final_loss
        )
        job_sql.end_job(
            session,
            job_id,
            JobState.SUCCEEDED,
            counts={
                "phase": "done",
                "loss": result.final_loss,
                "steps": result.steps,
                "peak_memory_bytes": result.peak_memory_bytes,
            },
        )


def run_export_job(settings: Settings, job_id: int) -> None:
    """Run the export job ``job_id`` (params from :func:`vitdex.training.export.enqueue_export`).

    Progress counts images; a cancel stops it between two images (the half-written folder
    is replaced by the next export); on success the job's ``counts`` hold the result.
    """

    def work(sessions: sessionmaker[Session]) -> None:
        from vitdex.training.export import export_dataset

        with sessions() as session:
            params = dict(job_sql.get_job(session, job_id).params or {})
        stop = CancelPoller(sessions, job_id, interval=CANCEL_POLL_S)
        write = progress_writer(sessions, job_id, every_s=PROGRESS_EVERY_S)

        def progress(done: int, total: int) -> None:
            write(done, total)
            if stop():
                raise job_sql.JobCancelled()

        path = params.get("path")
        result = export_dataset(
            settings,
            sessions,
            int(params["dataset_id"]),
            Path(path) if path else None,
            resolution=int(params.get("resolution") or 512),
            num_repeats=params.get("num_repeats"),
            class_repeats=int(params.get("class_repeats") or 1),
            detect_faces=bool(params.get("detect_faces", True)),
            progress=progress,
        )
        with sessions() as session:
            job_sql.end_job(session, job_id, JobState.SUCCEEDED, counts=result.to_dict())

    run_job_guarded(settings, job_id, work, what="export")
