"""Heads: train a linear classifier on stored vectors, apply it, read its report and its
least certain photos, correct labels.

Training and applying answer 202 with a job (``head-train``, ``head-apply``), as scans
do: both read every vector of a space. The labels a head puts on photos are filters
everywhere else (``head_label=HEAD:LABEL`` on the image list, facets and similar search).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from litestar import Controller, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT
from litestar.types import Guard
from sqlalchemy.orm import Session, sessionmaker

from vitdex.api.deps import Services
from vitdex.api.errors import Conflict, NotFound, Unavailable
from vitdex.api.schemas import JobOut, JobQueued
from vitdex.api.schemas.heads import (
    HeadLabelIn,
    HeadLabelOut,
    HeadLabelsPage,
    HeadOut,
    HeadsOut,
    HeadTrainIn,
    LabelOrder,
    LabelSourceName,
)
from vitdex.api.validation import json_content_type
from vitdex.config import Settings
from vitdex.db.models import INT64_MAX
from vitdex.errors import ConfigError
from vitdex.search import heads

#: A head's name in a path (heads are named in lower-case letters, digits, - and _).
HeadName = Annotated[str, PathParameter(min_length=1, max_length=64, description="The head's name")]
ImageId = Annotated[int, PathParameter(ge=1, le=INT64_MAX, description="Catalog image id")]
#: Longest class name a correction may give (the label column's width).
MAX_LABEL = 128


def _queue(
    services: Services, sessions: sessionmaker[Session], kind: str, params: dict[str, Any]
) -> JobQueued:
    """Queue a head job (its arguments checked now: a bad one is a 4xx, not a failed job)."""
    job = heads.queue_head_job(sessions, kind, params)
    services.queue.submit(job["id"], kind=kind)
    return JobQueued(job=JobOut.of(job))


class HeadsController(Controller):
    """``/api/v1/heads``: linear classifiers on stored vectors, and their labels."""

    path = "/heads"
    tags: Sequence[str] = ["heads"]
    guards: Sequence[Guard] = [json_content_type]

    @get(
        "/",
        sync_to_thread=True,
        operation_id="listHeads",
        summary="List heads",
        description=(
            "Every head by name: its space and model, classes, held-out report, when it was "
            "trained and applied, and how many photos carry each of its labels."
        ),
    )
    def list_heads(self, sessions: NamedDependency[sessionmaker[Session]]) -> HeadsOut:
        """Every head, with its report and label counts."""
        return HeadsOut(heads=[HeadOut.of(h) for h in heads.list_heads(sessions)])

    @post(
        "/",
        status_code=HTTP_202_ACCEPTED,
        sync_to_thread=True,
        raises=[NotFound, Conflict, Unavailable],
        operation_id="trainHead",
        summary="Train a head",
        description=(
            "Enqueue training a linear classifier named ``name`` on the stored vectors of a "
            "space: one class per tag of ``from_tags``, or per direct subfolder of "
            "``from_folder`` (exactly one). ``test_fraction`` of each class is held out for "
            "the report. 409 when the name is taken (``replace`` retrains it). No forward "
            "pass runs: the photos must be indexed in the space."
        ),
    )
    def train(
        self,
        data: JSONBody[HeadTrainIn],
        sessions: NamedDependency[sessionmaker[Session]],
        services: NamedDependency[Services],
    ) -> JobQueued:
        """Enqueue training a head; the job's counts say how it went."""
        params = {
            "name": data.name,
            "space": data.space,
            "from_tags": list(data.from_tags),
            "from_folder": data.from_folder,
            "test_fraction": data.test_fraction,
            "seed": data.seed,
            "replace": data.replace,
        }
        return _queue(services, sessions, "head-train", params)

    @get(
        "/{name:str}",
        sync_to_thread=True,
        operation_id="getHead",
        summary="Get a head",
        description=(
            "One head with its report on the held-out photos: accuracy, per-class precision, "
            "recall, F1 and support, and the confusion matrix (rows true, columns predicted)."
        ),
    )
    def get_head(self, sessions: NamedDependency[sessionmaker[Session]], name: HeadName) -> HeadOut:
        """One head and its report; 404 when there is none of that name."""
        return HeadOut.of(heads.get_head(sessions, name))

    @delete(
        "/{name:str}",
        status_code=HTTP_204_NO_CONTENT,
        sync_to_thread=True,
        operation_id="deleteHead",
        summary="Delete a head",
        description="Delete a head and every label it put on photos, corrections included.",
    )
    def delete_head(self, sessions: NamedDependency[sessionmaker[Session]], name: HeadName) -> None:
        """Delete a head and its labels (the photos stay)."""
        heads.delete_head(sessions, name)

    @post(
        "/{name:str}/apply",
        status_code=HTTP_202_ACCEPTED,
        sync_to_thread=True,
        raises=[Conflict, Unavailable],
        operation_id="applyHead",
        summary="Apply a head to the library",
        description=(
            "Enqueue labelling every photo with a vector in the head's space. Corrections "
            "people made are kept; every other label is predicted afresh. Refused when the "
            "space's model is no longer the head's."
        ),
    )
    def apply(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        services: NamedDependency[Services],
        name: HeadName,
    ) -> JobQueued:
        """Enqueue labelling the library with the head."""
        return _queue(services, sessions, "head-apply", {"name": name})

    @get(
        "/{name:str}/labels",
        sync_to_thread=True,
        operation_id="listHeadLabels",
        summary="List a head's labelled photos",
        description=(
            "One page of the photos a head labelled, each with its label, confidence, "
            "margin over the runner-up, and whether a person corrected it. ``order``: "
            "``uncertain`` (smallest margin first: the photos worth checking), "
            "``confident`` (largest first) or ``recent`` (last changed first)."
        ),
    )
    def list_labels(
        self,
        settings: NamedDependency[Settings],
        sessions: NamedDependency[sessionmaker[Session]],
        name: HeadName,
        label: Annotated[
            str | None,
            QueryParameter(max_length=MAX_LABEL, description="Only photos with this label"),
        ] = None,
        order: Annotated[
            LabelOrder, QueryParameter(description="uncertain, confident or recent")
        ] = "uncertain",
        source: Annotated[
            LabelSourceName | None,
            QueryParameter(description="Only predicted or only corrected labels"),
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
        offset: Annotated[int, QueryParameter(ge=0, le=INT64_MAX)] = 0,
    ) -> HeadLabelsPage:
        """One page of the head's labelled photos, least certain first by default."""
        if label is not None and "\x00" in label:
            raise ConfigError("label must not contain NUL characters")
        found = heads.head_labels(
            sessions,
            name,
            label=label,
            order=order,
            source=source,
            limit=limit,
            offset=offset,
            settings=settings,
        )
        return HeadLabelsPage(
            head=found["head"],
            total=found["total"],
            limit=limit,
            offset=offset,
            items=[HeadLabelOut.of(i) for i in found["items"]],
        )

    @put(
        "/{name:str}/labels/{image_id:int}",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        operation_id="correctHeadLabel",
        summary="Correct a photo's label",
        description=(
            "Set a photo's label under the head by hand: one of its classes (any case). A "
            "correction is kept through every later apply, until it is removed."
        ),
    )
    def correct(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        name: HeadName,
        image_id: ImageId,
        data: JSONBody[HeadLabelIn],
    ) -> HeadLabelOut:
        """Correct a photo's label; the photo's item as the label list shows it."""
        if not data.label.strip() or len(data.label) > MAX_LABEL:
            raise ConfigError(
                f"label must be one of the head's classes (1 to {MAX_LABEL} characters)"
            )
        return HeadLabelOut.of(heads.correct_label(sessions, name, image_id, data.label))

    @delete(
        "/{name:str}/labels/{image_id:int}",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        operation_id="uncorrectHeadLabel",
        summary="Remove a photo's correction",
        description=(
            "Take back a person's label for the photo: the head predicts it again from its "
            "vector at once. Answers the photo's item as it stands now."
        ),
    )
    def uncorrect(
        self,
        settings: NamedDependency[Settings],
        sessions: NamedDependency[sessionmaker[Session]],
        name: HeadName,
        image_id: ImageId,
    ) -> HeadLabelOut:
        """Remove a correction; the photo's item as it stands now (predicted again)."""
        return HeadLabelOut.of(
            heads.correct_label(sessions, name, image_id, None, settings=settings)
        )
