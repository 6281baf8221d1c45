"""DreamBooth training runs: start one from a dataset, follow it, cancel it, resume it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.response import File
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED
from litestar.types import Guard
from sqlalchemy.orm import Session, sessionmaker

from vitdex.api.controllers.jobs import Id, Offset
from vitdex.api.deps import Services
from vitdex.api.errors import Conflict, Forbidden, NotFound, Unavailable
from vitdex.api.schemas import RunOut, RunsOut
from vitdex.api.schemas.training import RunDetail, RunLosses
from vitdex.api.validation import json_content_type
from vitdex.config import Settings
from vitdex.db.models import INT64_MAX

CheckpointId = Annotated[int, PathParameter(ge=1, le=INT64_MAX, description="Checkpoint id")]
StepFolder = Annotated[
    str, PathParameter(max_length=64, description="The step's folder, ``step-NNNNNNNN``")
]
SampleName = Annotated[str, PathParameter(max_length=64, description="The image, ``II.png``")]


@dataclass
class TrainRunIn:
    """A run: the dataset (name or id), the base model and training settings.

    ``options`` takes any other training setting by name (see ``vitdex train --help``).
    """

    dataset: str
    base_model: str
    version: Literal["sd15", "sd21-base", "sd21", "sdxl"] | None = None
    resolution: int | None = None
    steps: int | None = None
    text_encoder_steps: int | None = None
    mode: Literal["two-stage", "joint"] | None = None
    learning_rate: float | None = None
    text_encoder_learning_rate: float | None = None
    save_every: int | None = None
    seed: int | None = None
    force: bool | None = None
    options: dict[str, Any] = field(default_factory=dict)


def _options(data: TrainRunIn) -> dict[str, Any]:
    chosen = {
        name: getattr(data, name)
        for name in (
            "version",
            "resolution",
            "steps",
            "text_encoder_steps",
            "mode",
            "learning_rate",
            "text_encoder_learning_rate",
            "save_every",
            "seed",
            "force",
        )
        if getattr(data, name) is not None
    }
    return {**data.options, **chosen}


class TrainingController(Controller):
    """``/api/v1/training-runs``: DreamBooth runs as jobs (progress under ``/jobs``)."""

    path = "/training-runs"
    tags: Sequence[str] = ["training"]
    guards: Sequence[Guard] = [json_content_type]

    @post(
        "/",
        status_code=HTTP_202_ACCEPTED,
        sync_to_thread=True,
        raises=[Forbidden, NotFound, Unavailable],
        operation_id="startTrainingRun",
        summary="Start a training run",
        description="Create a run and queue its job; the checkpoint is registered when it ends.",
    )
    def start(
        self,
        data: JSONBody[TrainRunIn],
        settings: NamedDependency[Settings],
        sessions: NamedDependency[sessionmaker[Session]],
        services: NamedDependency[Services],
    ) -> RunOut:
        """Create a run and queue its job; the checkpoint is registered when it ends."""
        from vitdex.training.runs import check_base_location, create_run, show_run

        check_base_location(settings, data.base_model)
        run, job_id = create_run(settings, sessions, data.dataset, data.base_model, _options(data))
        services.queue.submit(job_id, kind="train")
        return RunOut.of(show_run(sessions, run.id))

    @get(
        "/",
        sync_to_thread=True,
        operation_id="listTrainingRuns",
        summary="List training runs",
        description=(
            "Runs, newest first, with state, step and loss (a run whose process died is recovered"
            " first: queued again, to resume from its checkpoint)."
        ),
    )
    def list_all(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        services: NamedDependency[Services],
        # ``state`` is a reserved parameter name in Litestar; the query key stays "state".
        state_filter: Annotated[
            Literal["queued", "running", "succeeded", "failed", "cancelled"] | None,
            QueryParameter(name="state"),
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        offset: Offset = 0,
    ) -> RunsOut:
        """Runs, newest first, with state, step and loss (a run whose process died is
        recovered first: queued again, to resume from its checkpoint)."""
        from vitdex.training.runs import list_runs

        services.recover_orphans()
        runs = list_runs(sessions, state=state_filter, limit=limit, offset=offset)
        return RunsOut(runs=[RunOut.of(run) for run in runs])

    @get(
        "/{run_id:int}",
        sync_to_thread=True,
        operation_id="getTrainingRun",
        summary="Get one training run",
        description=(
            "One run with its config, job state and checkpoint, and what it measured while "
            "training: validation losses, sample images and peak accelerator memory."
        ),
    )
    def get_one(
        self,
        settings: NamedDependency[Settings],
        sessions: NamedDependency[sessionmaker[Session]],
        services: NamedDependency[Services],
        run_id: Id,
    ) -> RunDetail:
        """One run with its config, job state and checkpoint, and what it measured while
        training: validation losses, sample images and peak accelerator memory."""
        from vitdex.training.runs import run_detail

        services.recover_orphans()
        return RunDetail.of(run_detail(settings, sessions, run_id))

    @post(
        "/{run_id:int}/resume",
        status_code=HTTP_202_ACCEPTED,
        sync_to_thread=True,
        raises=[Conflict, Unavailable],
        operation_id="resumeTrainingRun",
        summary="Resume a training run",
        description="Queue a job that continues the run from its last checkpoint.",
    )
    def resume(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        services: NamedDependency[Services],
        run_id: Id,
    ) -> RunOut:
        """Queue a job that continues the run from its last checkpoint."""
        from vitdex.training.runs import resume_run, show_run

        run, job_id = resume_run(sessions, run_id)
        services.queue.submit(job_id, kind="train")
        return RunOut.of(show_run(sessions, run.id))

    @post(
        "/{run_id:int}/cancel",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        raises=[Conflict],
        operation_id="cancelTrainingRun",
        summary="Cancel a training run",
        description=(
            "Ask the run to stop; it saves a checkpoint first, so it can resume. A run whose "
            "process died is cancelled at once."
        ),
    )
    def cancel(
        self,
        settings: NamedDependency[Settings],
        sessions: NamedDependency[sessionmaker[Session]],
        run_id: Id,
    ) -> RunOut:
        """Ask the run to stop; it saves a checkpoint first, so it can resume. A run whose
        process died is cancelled at once."""
        from vitdex.training.runs import cancel_run

        stale = settings.jobs.job_stale_after_s
        return RunOut.of(cancel_run(sessions, run_id, stale_after_s=stale))

    @get(
        "/{run_id:int}/losses",
        sync_to_thread=True,
        raises=[NotFound, Forbidden],
        operation_id="getTrainingRunLosses",
        summary="Get a training run's loss curve",
        description="The loss per reported step, oldest first (about one point a second).",
    )
    def losses(
        self,
        settings: NamedDependency[Settings],
        sessions: NamedDependency[sessionmaker[Session]],
        run_id: Id,
    ) -> RunLosses:
        """The loss per reported step, oldest first (about one point a second)."""
        from vitdex.training.runs import run_losses

        return RunLosses.of(run_losses(settings, sessions, run_id))

    @get(
        "/{run_id:int}/samples/{folder:str}/{name:str}",
        sync_to_thread=True,
        media_type="image/png",
        raises=[NotFound, Forbidden],
        operation_id="getTrainingRunSample",
        summary="Get a sample image of a training run",
        description=(
            "A PNG rendered during training (``step-NNNNNNNN/II.png``, as the run detail's "
            "sample urls name it), served only from the run's own samples folder."
        ),
    )
    def sample(
        self,
        settings: NamedDependency[Settings],
        sessions: NamedDependency[sessionmaker[Session]],
        run_id: Id,
        folder: StepFolder,
        name: SampleName,
    ) -> File:
        """A PNG rendered during training, served only from the run's samples folder."""
        from vitdex.training.runs import run_sample_file

        path = run_sample_file(settings, sessions, run_id, f"{folder}/{name}")
        return File(path, media_type="image/png", content_disposition_type="inline")

    @get(
        "/{run_id:int}/checkpoints/{checkpoint_id:int}/file",
        sync_to_thread=True,
        media_type="application/octet-stream",
        raises=[NotFound, Forbidden],
        operation_id="getTrainingRunCheckpointFile",
        summary="Download a run's checkpoint",
        description=(
            "The single-file checkpoint (.safetensors) the run registered, served only from "
            "the run's own folder."
        ),
    )
    def checkpoint_file(
        self,
        settings: NamedDependency[Settings],
        sessions: NamedDependency[sessionmaker[Session]],
        run_id: Id,
        checkpoint_id: CheckpointId,
    ) -> File:
        """The single-file checkpoint the run registered, from the run's own folder only."""
        from vitdex.training.runs import run_checkpoint_file

        path = run_checkpoint_file(settings, sessions, run_id, checkpoint_id)
        return File(
            path,
            media_type="application/octet-stream",
            content_disposition_type="attachment",
            filename=path.name,
        )
