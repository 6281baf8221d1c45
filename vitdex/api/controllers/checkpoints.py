"""Registered single-file Stable Diffusion checkpoints."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from litestar import Controller, delete, get
from litestar.di import NamedDependency
from litestar.params import PathParameter, QueryParameter
from litestar.response import File
from litestar.status_codes import HTTP_200_OK
from sqlalchemy.orm import Session, sessionmaker

from vitdex.api.controllers.jobs import Offset
from vitdex.api.schemas import CheckpointDeleted, CheckpointDetail, CheckpointsPage
from vitdex.db.models import INT64_MAX
from vitdex.training import registry

Id = Annotated[int, PathParameter(ge=1, le=INT64_MAX, description="Checkpoint id")]


class CheckpointsController(Controller):
    """``/api/v1/checkpoints``: registered single-file Stable Diffusion checkpoints."""

    path = "/checkpoints"
    tags: Sequence[str] = ["training"]

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
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        offset: Offset = 0,
    ) -> CheckpointsPage:
        """Checkpoints, newest first, with the total that match."""
        page = registry.list_checkpoints(
            sessions, status=status, run_id=run_id, limit=limit, offset=offset
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
