"""Training runs as jobs: create a run from a dataset, run or resume it, list and show runs.

A run is a ``training_runs`` row plus a folder ``VITDEX_HOME/training/run-<id>``::

    data/           the dataset exported for this run (crops, captions, dataset.toml);
                    written once, so a resumed run trains on exactly the same images
    checkpoints/    resumable checkpoints (see :mod:`vitdex.training.dreambooth`)
    samples/        images rendered during training (``step-NNNNNNNN/II.png``), listed
                    in ``samples.jsonl``; validation losses in ``validation.jsonl``
    final/          the trained pipeline (diffusers folder)
    <name>.safetensors  the converted single-file checkpoint, registered in ``checkpoints``

Each start or resumption is a ``train`` job row (params ``{"run_id"}``), so progress,
cancel and the queue work as for every other job. Nothing here imports torch: the API
creates runs and the job function (:func:`vitdex.jobs.training.run_train_job`) trains.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import STALE_AFTER_S, Settings
from vitdex.db import datasets as dataset_sql
from vitdex.db import jobs as job_sql
from vitdex.db import training as run_sql
from vitdex.db.models import Checkpoint, Job, JobState, TrainingRun, utcnow
from vitdex.db.recovery import is_orphan
from vitdex.errors import ConfigError, ConflictError, ForbiddenError, NotFoundError
from vitdex.paths import confine, inside
from vitdex.training.config import TrainConfig, scale_text_encoder_steps
from vitdex.training.losses import SAMPLES_DIR, read_losses, read_samples, read_validation

#: Config fields the run fills in itself: callers may not set them.
_MANAGED = frozenset({"base_model", "instance_dir", "class_dir"})


def run_dir(settings: Settings, run_id: int) -> Path:
    """Where run ``run_id`` keeps its data, checkpoints and results."""
    return settings.storage.home / "training" / f"run-{run_id}"


def check_base_location(settings: Settings, base_model: str) -> None:
    """Over HTTP a local base model must lie inside VITDEX_ALLOWED_ROOTS or VITDEX_HOME.

    Hub ids pass; the check runs on the resolved path, so ``..`` and symlinks cannot
    climb out.
    """
    from vitdex.training.bases import base_kind

    if base_kind(base_model) == "hub":
        return
    resolved = Path(base_model).expanduser().resolve()
    if not inside(resolved, [*settings.api.allowed_roots, settings.storage.home.resolve()]):
        raise ForbiddenError(
            f"{base_model} is outside the allowed roots (VITDEX_ALLOWED_ROOTS) and VITDEX_HOME"
        )


def _early_checks(config: TrainConfig) -> None:
    """Refuse what can be refused without loading the base (version, resolution)."""
    from vitdex.training.bases import check_resolution, get_version, version_of

    config.validate()
    version = version_of(config.base_model, config.version)
    if version is not None:
        entry = get_version(version)
        check_resolution(entry, config.resolution or entry.resolution, force=config.force)


def create_run(
    settings: Settings,
    sessions: sessionmaker[Session],
    dataset: str | int,
    base_model: str,
    options: Mapping[str, Any] | None = None,
) -> tuple[TrainingRun, int]:
    """Create a run of ``dataset`` on ``base_model`` and its first (queued) job row.

    ``options`` are :class:`TrainConfig` fields. Returns the run and the job id; the
    caller runs the job (in this process or through the queue). ``steps`` given alone
    scales the text encoder's steps to it (:func:`scale_text_encoder_steps`), for the CLI
    and the API alike.
    """
    from vitdex.training.bases import version_of
    from vitdex.training.presets import apply_preset, full_run_defaults

    options = dict(options or {})
    version = version_of(base_model, options.get("version"))
    if options.get("preset"):
        options = apply_preset(options, version)
    # A full SDXL run trains no text encoder: its steps must not count in total_steps.
    options = scale_text_encoder_steps(full_run_defaults(options, version))
    managed = sorted(_MANAGED & set(options))
    if managed:
        raise ConfigError(f"these settings are set by the run itself: {', '.join(managed)}")
    if not base_model:
        raise ConfigError("a base model is required (hub id, diffusers folder or checkpoint)")
    with sessions() as session:
        row = dataset_sql.find_dataset(session, dataset)
        counts = dataset_sql.item_counts(session, [row.id]).get(row.id, {})
        if not counts.get("instance"):
            raise ConfigError(f"dataset {row.name!r} has no included instance images")
        has_class = bool(counts.get("class"))
        defaults: dict[str, Any] = {"instance_prompt": row.prompt}
        if row.class_prompt:
            defaults["class_prompt"] = row.class_prompt
        if has_class:
            defaults["prior_preservation"] = True
        if row.crop_mode == "buckets":
            defaults["buckets"] = True
        # Paths are placeholders until the run has an id (and so a folder).
        config = TrainConfig.from_dict(
            {
                **defaults,
                **options,
                "base_model": base_model,
                "instance_dir": "data/instance",
                "class_dir": "data/class" if has_class else None,
            }
        )
        _early_checks(config)
        run = run_sql.create_run(
            session,
            dataset_id=row.id,
            base_model=base_model,
            version=config.version or "auto",
            config={},
            total_steps=config.total_steps,
            output_dir="",
        )
        folder = run_dir(settings, run.id)
        config.instance_dir = str(folder / "data" / "instance")
        config.class_dir = str(folder / "data" / "class") if has_class else None
        run.config = config.to_dict()
        run.output_dir = str(folder)
        job, _ = job_sql.enqueue_job_row(session, "train", {"run_id": run.id})
        run.job_id = job.id
        session.commit()
        return run, job.id


def resume_run(
    sessions: sessionmaker[Session],
    run_id: int,
    *,
    force: bool = False,
    stale_after_s: float = STALE_AFTER_S,
) -> tuple[TrainingRun, int]:
    """The job that continues run ``run_id`` from its last checkpoint.

    A run whose job waits in ``queued`` (say, recovered after its process died) is
    resumed by that very job: its id is returned, for the caller to run or submit (a
    row submitted twice runs once). Otherwise a new job row is made; a run whose job is
    running is refused, unless the process that ran it is gone (killed: no heartbeat,
    or no process on this host) or ``force`` says it is (another host's worker).
    """
    with sessions() as session:
        run = run_sql.get_run(session, run_id)
        if run.state == JobState.SUCCEEDED:
            raise ConflictError(f"training run {run_id} has already finished")
        if run.job_id is not None:
            job = session.get(Job, run.job_id, populate_existing=True)
            if job is not None and job.state == JobState.QUEUED and not job.cancel_requested:
                run.state, run.error = JobState.QUEUED, None
                session.commit()
                return run, job.id
            if job is not None and job.state in job_sql.ACTIVE_STATES:
                gone = is_orphan(job, stale_after_s=stale_after_s)
                if not (force or gone):
                    raise ConflictError(
                        f"training run {run_id} is {job.state} as job {job.id}; cancel it "
                        "first or wait (force the resume if its process is gone)"
                    )
                job.state, job.finished_at = JobState.FAILED, utcnow()
                job.error = "its process stopped without finishing; resumed by a new job"
        job, _ = job_sql.enqueue_job_row(session, "train", {"run_id": run.id})
        run.job_id = job.id
        run.state = JobState.QUEUED
        run.error = None
        session.commit()
        return run, job.id


def cancel_run(
    sessions: sessionmaker[Session], run_id: int, *, stale_after_s: float = STALE_AFTER_S
) -> dict[str, Any]:
    """Ask the run's job to stop; it saves a checkpoint first, so the run can resume. A
    queued run, or one whose process died, is cancelled at once."""
    with sessions() as session:
        run = run_sql.get_run(session, run_id)
        if run.job_id is None:
            raise ConflictError(f"training run {run_id} has no job to cancel")
        # A job cancelled at once (queued, or its process gone) takes its run along.
        job_sql.request_cancel(session, run.job_id, stale_after_s=stale_after_s)
        session.commit()
        return run_sql.run_to_dict(session, run_sql.get_run(session, run_id))


def show_run(sessions: sessionmaker[Session], run_id: int) -> dict[str, Any]:
    """A run as JSON, with its job state and checkpoint."""
    with sessions() as session:
        return run_sql.run_to_dict(session, run_sql.get_run(session, run_id))


def list_runs(
    sessions: sessionmaker[Session],
    *,
    state: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Runs, newest first."""
    with sessions() as session:
        runs = run_sql.list_runs(session, state=state, limit=limit, offset=offset)
        return run_sql.runs_to_dicts(session, runs)


def checkpoint_name(dataset_name: str | None, run_id: int) -> str:
    """The registered name of a run's checkpoint: ``<dataset>-run<id>``, file-name safe."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", dataset_name or "dreambooth").strip("-.")
    return f"{stem or 'dreambooth'}-run{run_id}"


def _own_folder(settings: Settings, run: TrainingRun) -> Path:
    """The run's folder, refused unless it lies inside VITDEX_HOME/training."""
    folder = Path(run.output_dir).resolve()
    if not inside(folder, [(settings.storage.home / "training").resolve()]):
        raise ForbiddenError(f"training run {run.id} keeps its files outside VITDEX_HOME/training")
    return folder


def run_losses(settings: Settings, sessions: sessionmaker[Session], run_id: int) -> dict[str, Any]:
    """A run's loss per reported step, oldest first: ``{"run_id", "points": [{step, loss}]}``.

    Read from the log the training job appends to each step (:mod:`vitdex.training.losses`);
    a resumed step keeps its latest loss. A run that reported nothing yet has no points.
    """
    with sessions() as session:
        run = run_sql.get_run(session, run_id)
        folder = _own_folder(settings, run)
    points = read_losses(folder)
    return {"run_id": run_id, "points": [{"step": s, "loss": v} for s, v in points]}


def _during(run_id: int, folder: Path) -> dict[str, Any]:
    """What a run's folder says about its training so far: validation, samples, memory."""
    samples = []
    prefix = f"{SAMPLES_DIR}/"
    for sample in read_samples(folder):
        file = sample.pop("file")
        if file.startswith(prefix):
            # The image is served by the run, only from its samples folder.
            url = f"/api/v1/training-runs/{run_id}/samples/{file[len(prefix) :]}"
            samples.append({**sample, "url": url})
    peak = None
    result = folder / "result.json"
    if result.is_file():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            value = json.loads(result.read_text(encoding="utf-8")).get("peak_memory_bytes")
            peak = int(value) if isinstance(value, int) else None
    return {
        "validation": [{"step": s, "loss": v} for s, v in read_validation(folder)],
        "samples": samples,
        "peak_memory_bytes": peak,
    }


def run_detail(settings: Settings, sessions: sessionmaker[Session], run_id: int) -> dict[str, Any]:
    """A run as :func:`show_run` gives it, plus its validation losses ``[{step, loss}]``,
    sample images ``[{step, index, prompt, seed, url}]`` and peak accelerator memory.

    A run keeping its files outside VITDEX_HOME/training shows none of them.
    """
    with sessions() as session:
        run = run_sql.get_run(session, run_id)
        data = run_sql.run_to_dict(session, run)
        output_dir = run.output_dir
    folder = Path(output_dir).resolve() if output_dir else None
    if folder is None or not inside(folder, [(settings.storage.home / "training").resolve()]):
        return {**data, "validation": [], "samples": [], "peak_memory_bytes": None}
    return {**data, **_during(run_id, folder)}


def run_sample_file(
    settings: Settings, sessions: sessionmaker[Session], run_id: int, name: str
) -> Path:
    """The sample image ``name`` (``step-NNNNNNNN/II.png``) of run ``run_id``.

    Served only from the run's own ``samples/`` folder: a name that climbs out (``..``) or
    a link that leads out is refused (:class:`ForbiddenError`), anything else missing is
    not found.
    """
    with sessions() as session:
        run = run_sql.get_run(session, run_id)
        folder = _own_folder(settings, run)
    root = folder / SAMPLES_DIR
    try:
        # The folder itself may not be a link out of the run's folder either.
        within = confine(root, [folder], scope=f"training run {run_id}'s folder")
        path = confine(root / name, [within], scope=f"training run {run_id}'s samples")
    except (FileNotFoundError, NotADirectoryError):
        raise NotFoundError(f"training run {run_id} has no sample {name}") from None
    except OSError as exc:
        raise NotFoundError(f"training run {run_id} has no readable sample {name}: {exc}") from None
    if path.suffix.lower() != ".png" or not path.is_file():
        raise NotFoundError(f"training run {run_id} has no sample {name}")
    return path


def run_checkpoint_file(
    settings: Settings, sessions: sessionmaker[Session], run_id: int, checkpoint_id: int
) -> Path:
    """The single-file checkpoint ``checkpoint_id`` that run ``run_id`` registered.

    Served only from the run's own folder: a checkpoint registered from elsewhere, or one
    of another run, is not found here.
    """
    with sessions() as session:
        run = run_sql.get_run(session, run_id)
        folder = _own_folder(settings, run)
        row = session.get(Checkpoint, checkpoint_id)
        if row is None or row.run_id != run_id:
            raise NotFoundError(f"training run {run_id} has no checkpoint {checkpoint_id}")
        recorded = Path(row.path)
    path = recorded.resolve()
    if not inside(path, [folder]):
        raise ForbiddenError(f"checkpoint {checkpoint_id} lies outside its run's folder")
    if not path.is_file():
        raise NotFoundError(f"the file of checkpoint {checkpoint_id} is gone from {recorded}")
    return path
