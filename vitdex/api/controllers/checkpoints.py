"""Registered single-file Stable Diffusion checkpoints and the LoRAs extracted from them.

``POST /api/v1/checkpoints/{id}/lora`` answers 202 with a ``lora-extract`` job: the
extraction loads two models and runs an SVD per layer, far too long for a request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.response import File
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED
from litestar.types import Guard
from sqlalchemy.orm import Session, sessionmaker

from vitdex.api.controllers.jobs import Offset
from vitdex.api.deps import Services
from vitdex.api.errors import Conflict, NotFound, Unavailable
from vitdex.api.schemas import (
    CheckpointDeleted,
    CheckpointDetail,
    CheckpointsPage,
    JobOut,
    JobQueued,
)
from vitdex.api.schemas.lora import LoraExtractIn
from vitdex.api.validation import json_content_type
from vitdex.db.models import INT64_MAX
from vitdex.training import registry

Id = Annotated[int, PathParameter(ge=1, le=INT64_MAX, description="Checkpoint id")]


class CheckpointsController(Controller):
    """``/api/v1/checkpoints``: registered single-file Stable Diffusion checkpoints."""

    path = "/checkpoints"
    tags: Sequence[str] = ["training"]
    guards: Sequence[Guard] = [json_content_type]

    @get(
        "/",
        sync_to_thread=True,
        operation_id="listCheckpoints",
        summary="List checkpoints",
        description="Checkpoints, newest first, with the total that match.",
    )
    def list_all(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        # "status" reads better than "state" here and is not a name Litestar reserves.
        status: Annotated[
            Literal["ready", "invalid"] | None, QueryParameter(description="ready or invalid")
        ] = None,
        run_id: Annotated[int | None, QueryParameter(ge=1, le=INT64_MAX)] = None,
        kind: Annotated[
            Literal["checkpoint", "lora"] | None,
            QueryParameter(description="checkpoint (whole models) or lora"),
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        offset: Offset = 0,
    ) -> CheckpointsPage:
        """Checkpoints, newest first, with the total that match."""
        page = registry.list_checkpoints(
            sessions, status=status, run_id=run_id, kind=kind, limit=limit, offset=offset
        )
        return CheckpointsPage.of(page)

    @get(
        "/{checkpoint_id:int}",
        sync_to_thread=True,
        operation_id="getCheckpoint",
        summary="Get one checkpoint",
        description="One checkpoint: file, sha256, training config, dataset hash, status.",
    )
    def get_one(
        self, sessions: NamedDependency[sessionmaker[Session]], checkpoint_id: Id
    ) -> CheckpointDetail:
        """One checkpoint: file, sha256, training config, dataset hash, status."""
        return CheckpointDetail.of(registry.show_checkpoint(sessions, checkpoint_id))

    @get(
        "/{checkpoint_id:int}/sample",
        sync_to_thread=True,
        media_type="image/png",
        operation_id="getCheckpointSample",
        summary="Get a checkpoint's sample grid",
        description="The fixed-seed sample grid (PNG) rendered from the registered file.",
    )
    def sample(self, sessions: NamedDependency[sessionmaker[Session]], checkpoint_id: Id) -> File:
        """The fixed-seed sample grid (PNG) rendered from the registered file."""
        path = registry.sample_file(sessions, checkpoint_id)
        return File(
            path,
            media_type="image/png",
            content_disposition_type="inline",
            filename=f"checkpoint-{checkpoint_id}.png",
        )

    @delete(
        "/{checkpoint_id:int}",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        operation_id="deleteCheckpoint",
        summary="Unregister a checkpoint",
        description="Unregister a checkpoint; with ``files=true`` its own files are deleted too.",
    )
    def remove(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        checkpoint_id: Id,
        files: Annotated[
            bool, QueryParameter(description="Also delete the file, its YAML and sample")
        ] = False,
    ) -> CheckpointDeleted:
        """Unregister a checkpoint; with ``files=true`` its own files are deleted too."""
        return CheckpointDeleted.of(
            registry.delete_checkpoint(sessions, checkpoint_id, files=files)
        )

    @post(
        "/{checkpoint_id:int}/lora",
        status_code=HTTP_202_ACCEPTED,
        sync_to_thread=True,
        raises=[NotFound, Conflict, Unavailable],
        operation_id="extractLora",
        summary="Extract a LoRA from a checkpoint",
        description=(
            "Queue a ``lora-extract`` job: the difference between the checkpoint and its "
            "registered base model, cut to ``rank`` per layer by an SVD, written as a kohya "
            "LoRA file and registered (kind ``lora``, ``source_id`` this checkpoint). 404 "
            "for an unknown checkpoint, 400 for a bad rank or a LoRA as source, 409 when "
            "the name is taken. The job's counts name the registered LoRA."
        ),
    )
    def extract_lora(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        services: NamedDependency[Services],
        checkpoint_id: Id,
        data: JSONBody[LoraExtractIn],
    ) -> JobQueued:
        """Queue extracting a LoRA from the checkpoint; the job's counts say what came of it."""
        from vitdex.training.lora import JOB_KIND, enqueue_lora_extract

        job = enqueue_lora_extract(
            sessions,
            checkpoint_id,
            rank=data.rank,
            conv_rank=data.conv_rank,
            text_encoder=data.text_encoder,
            name=data.name,
        )
        services.queue.submit(job["id"], kind=JOB_KIND)
        return JobQueued(job=JobOut.of(job))
