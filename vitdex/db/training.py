"""Every SQL statement about training runs: create, progress, finish, read."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from vitdex.db.models import ERROR_MAX, Checkpoint, Job, JobState, TrainingRun, iso, utcnow
from vitdex.db.rows import get_row
from vitdex.errors import NotFoundError


def create_run(
    session: Session,
    *,
    dataset_id: int | None,
    base_model: str,
    version: str,
    config: Mapping[str, Any],
    total_steps: int,
    output_dir: str,
    job_id: int | None = None,
) -> TrainingRun:
    """A new queued run row (flushed, not committed)."""
    run = TrainingRun(
        dataset_id=dataset_id,
        job_id=job_id,
        base_model=base_model,
        version=version,
        config=dict(config),
        state=JobState.QUEUED,
        step=0,
        total_steps=total_steps,
        output_dir=output_dir,
    )
    session.add(run)
    session.flush()
    return run


def get_run(session: Session, run_id: int) -> TrainingRun:
    """The run ``run_id``; :class:`NotFoundError` when there is none."""
    return get_row(session, TrainingRun, run_id, "training run")


def run_of_job(session: Session, job_id: int) -> TrainingRun:
    """The run a ``train`` job row trains."""
    run = session.scalars(select(TrainingRun).where(TrainingRun.job_id == job_id)).first()
    if run is None:
        raise NotFoundError(f"job {job_id} has no training run")
    return run


def list_runs(
    session: Session, *, state: str | None = None, limit: int = 100, offset: int = 0
) -> Sequence[TrainingRun]:
    """Runs, newest first, optionally only those in ``state``."""
    query = select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit).offset(offset)
    if state is not None:
        query = query.where(TrainingRun.state == state)
    return session.scalars(query).all()


def set_run_state(
    session: Session,
    run_id: int,
    state: JobState,
    *,
    step: int | None = None,
    loss: float | None = None,
    error: str | None = None,
    job_id: int | None = None,
    version: str | None = None,
) -> TrainingRun:
    """Record a run's state (and step, loss, error, job, resolved version). Commits."""
    run = session.get_one(TrainingRun, run_id, populate_existing=True)
    run.state = state
    if step is not None:
        run.step = step
    if loss is not None:
        run.loss = loss
    if job_id is not None:
        run.job_id = job_id
    if version is not None:
        run.version = version
    run.error = error[:ERROR_MAX] if error else None
    run.updated_at = utcnow()
    session.commit()
    return run


def follow_job(session: Session, job: Job, state: JobState, error: str | None) -> None:
    """Give the training runs that follow ``job`` its new state, so they read like their
    job wherever runs are listed (a job cancelled or recovered outside its run). Flushes
    nothing; the caller commits."""
    if job.kind != "train":
        return
    for run in session.scalars(select(TrainingRun).where(TrainingRun.job_id == job.id)):
        run.state = state
        run.error = error[:ERROR_MAX] if error else None
        run.updated_at = utcnow()


def set_run_progress(session: Session, run_id: int, *, step: int, loss: float | None) -> None:
    """Record the step reached and the latest (smoothed) loss. Commits."""
    run = session.get_one(TrainingRun, run_id)
    run.step = step
    if loss is not None:
        run.loss = loss
    session.commit()


def checkpoint_of_run(session: Session, run_id: int) -> Checkpoint | None:
    """The newest registered checkpoint converted from run ``run_id``."""
    return session.scalars(
        select(Checkpoint).where(Checkpoint.run_id == run_id).order_by(Checkpoint.id.desc())
    ).first()


def runs_to_dicts(session: Session, runs: Sequence[TrainingRun]) -> list[dict[str, Any]]:
    """The JSON form of runs, each with its job's state and newest checkpoint.

    Two queries for the whole list (jobs, checkpoints), not two per run.
    """
    job_ids = [run.job_id for run in runs if run.job_id is not None]
    job_states: dict[int, str] = {}
    if job_ids:
        query = select(Job.id, Job.state).where(Job.id.in_(job_ids))
        job_states = {job_id: state for job_id, state in session.execute(query)}
    newest: dict[int, Checkpoint] = {}
    if runs:
        rows = session.scalars(
            select(Checkpoint)
            .where(Checkpoint.run_id.in_([run.id for run in runs]))
            .order_by(Checkpoint.id)
        )
        newest = {row.run_id: row for row in rows if row.run_id is not None}
    return [
        _run_dict(
            run,
            job_states.get(run.job_id) if run.job_id is not None else None,
            newest.get(run.id),
        )
        for run in runs
    ]


def run_to_dict(session: Session, run: TrainingRun) -> dict[str, Any]:
    """The JSON form of one run (see :func:`runs_to_dicts`)."""
    return runs_to_dicts(session, [run])[0]


def _run_dict(
    run: TrainingRun, job_state: str | None, checkpoint: Checkpoint | None
) -> dict[str, Any]:
    return {
        "id": run.id,
        "state": run.state,
        "step": run.step,
        "total_steps": run.total_steps,
        "loss": run.loss,
        "base_model": run.base_model,
        "version": run.version,
        "dataset_id": run.dataset_id,
        "job_id": run.job_id,
        "job_state": job_state,
        "output_dir": run.output_dir,
        "error": run.error,
        "config": run.config,
        "checkpoint": (
            {"id": checkpoint.id, "path": checkpoint.path, "sha256": checkpoint.sha256}
            if checkpoint is not None
            else None
        ),
        "created_at": iso(run.created_at),
        "updated_at": iso(run.updated_at),
    }
