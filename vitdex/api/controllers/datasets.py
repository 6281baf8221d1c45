"""DreamBooth datasets curated from search results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal

from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_202_ACCEPTED
from litestar.types import Guard
from sqlalchemy.orm import Session, sessionmaker

from vitdex.api.controllers.jobs import Offset
from vitdex.api.deps import Services
from vitdex.api.errors import Conflict, Forbidden, NotFound, Unavailable
from vitdex.api.schemas import (
    DatasetChanged,
    DatasetDeleted,
    DatasetItemOut,
    DatasetsPage,
    DatasetView,
    JobOut,
    JobQueued,
)
from vitdex.api.schemas.filters import check_head_labels
from vitdex.api.schemas.training import CaptionsReplaced, DatasetCaptions, DatasetOut
from vitdex.api.validation import json_content_type
from vitdex.config import Settings
from vitdex.db.models import INT64_MAX
from vitdex.errors import ConfigError

Id = Annotated[int, PathParameter(ge=1, le=INT64_MAX, description="Dataset id")]
ImageId = Annotated[int, PathParameter(ge=1, le=INT64_MAX, description="Image id")]


@dataclass
class DatasetIn:
    """A dataset to curate from the neighbours of seed images (catalog ids)."""

    name: str
    seeds: list[int]
    #: Instance caption, e.g. "a photo of sks dog"; may be left out with a trigger word
    #: ("a photo of TRIGGER CLASS").
    prompt: str | None = None
    #: Class caption, e.g. "a photo of a dog"; enables class images. Defaults to "a photo
    #: of a CLASS" with a class word.
    class_prompt: str | None = None
    #: The subject's rare token, e.g. "sks".
    trigger_word: str | None = None
    #: The subject's class, e.g. "dog".
    class_word: str | None = None
    #: ``square`` crops or aspect-ratio ``buckets`` on export.
    crop_mode: Literal["square", "buckets"] = "square"
    k: int = 40
    min_score: float | None = None
    #: Cosine at or above which a candidate is a near-duplicate; null keeps them. At its
    #: default it yields to ``min_distance``; otherwise the two must agree.
    dedup: float | None = 0.95
    #: No two included photos closer than this cosine distance (1 − cosine), in [0, 1):
    #: the near-duplicate rule as a distance (0.05 is dedup 0.95).
    min_distance: float | None = None
    #: At most this many instance images, seeds included (needed by the diverse and
    #: representative samplers).
    max: int | None = None
    #: Maximal marginal relevance lambda in [0, 1]; null ranks by score (nearest only).
    mmr: float | None = None
    #: How ``max`` photos are picked among the eligible candidates: the best scores,
    #: farthest-point sampling, or the photo nearest each k-means centre.
    sampler: Literal["nearest", "diverse", "representative"] = "nearest"
    space: str | None = None
    class_count: int | None = None
    class_label: str | None = None
    #: Instance candidates must carry every one of these tags.
    tags: list[str] = field(default_factory=list)
    #: Leave out photos marked as duplicates in review (instance and class candidates).
    hide_duplicates: bool = False
    #: Instance candidates must carry every one of these head labels (``HEAD:LABEL``).
    head_labels: list[str] = field(default_factory=list)


@dataclass
class ImageIdsIn:
    """Images to include or exclude by hand."""

    image_ids: list[int] = field(default_factory=list)
    #: Role of an included image that is no candidate yet.
    role: Literal["instance", "class"] = "instance"


@dataclass
class ExportIn:
    """Where and how to export; the folder must lie inside VITDEX_ALLOWED_ROOTS."""

    #: Absolute folder; default VITDEX_HOME/datasets/ID-NAME.
    path: str | None = None
    resolution: int = 512
    num_repeats: int | None = None
    class_repeats: int = 1
    detect_faces: bool = True


@dataclass
class DatasetPatchIn:
    """Fields to change; null (or left out) keeps a field, "" clears a word or class prompt."""

    trigger_word: str | None = None
    class_word: str | None = None
    crop_mode: Literal["square", "buckets"] | None = None
    prompt: str | None = None
    class_prompt: str | None = None


@dataclass
class ReplaceIn:
    """A find/replace over the effective captions of a dataset's items."""

    find: str
    replace: str = ""
    #: ``find`` is a Python regular expression; ``replace`` may use \1 or \g<name>.
    regex: bool = False
    #: Only instance or only class items (default: both).
    role: Literal["instance", "class"] | None = None
    #: Count and show the changes without writing them.
    dry_run: bool = False


@dataclass
class CaptionIn:
    """An item's caption, written by the next export instead of the dataset's prompt."""

    #: One line; null goes back to the dataset's prompt (or class prompt).
    caption: str | None
    #: Which item of the image: its instance or its class candidate.
    role: Literal["instance", "class"] = "instance"


def _check_ids(ids: Sequence[int], what: str) -> list[int]:
    if not ids:
        raise ConfigError(f"{what} must list at least one image id")
    if any(not 1 <= i <= INT64_MAX for i in ids):
        raise ConfigError(f"{what} must be image ids between 1 and {INT64_MAX}")
    return list(ids)


class DatasetsController(Controller):
    """``/api/v1/datasets``: curate, audit, edit and export DreamBooth datasets."""

    path = "/datasets"
    tags: Sequence[str] = ["training"]
    guards: Sequence[Guard] = [json_content_type]

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        sync_to_thread=True,
        raises=[NotFound, Conflict],
        operation_id="createDataset",
        summary="Create a training dataset",
        description="Curate a dataset: every candidate with the reason it is in or out.",
    )
    def create(
        self,
        data: JSONBody[DatasetIn],
        settings: NamedDependency[Settings],
        sessions: NamedDependency[sessionmaker[Session]],
    ) -> DatasetView:
        """Curate a dataset: every candidate with the reason it is in or out."""
        from vitdex.training.curate import CurateOptions, create_dataset

        options = CurateOptions(
            k=data.k,
            min_score=data.min_score,
            dedup=data.dedup,
            min_distance=data.min_distance,
            max_items=data.max,
            mmr=data.mmr,
            sampler=data.sampler,
            space=data.space,
            class_count=data.class_count,
            class_label=data.class_label,
            tags=tuple(data.tags),
            hide_duplicates=data.hide_duplicates,
            head_labels=tuple(check_head_labels(data.head_labels, "head_labels")),
        )
        view = create_dataset(
            settings,
            sessions,
            data.name,
            _check_ids(data.seeds, "seeds"),
            prompt=data.prompt,
            class_prompt=data.class_prompt,
            options=options,
            trigger_word=data.trigger_word,
            class_word=data.class_word,
            crop_mode=data.crop_mode,
        )
        return DatasetView.of(view)

    @get(
        "/",
        sync_to_thread=True,
        operation_id="listDatasets",
        summary="List datasets",
        description="Datasets, newest first, with their item counts.",
    )
    def list_all(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        offset: Offset = 0,
    ) -> DatasetsPage:
        """Datasets, newest first, with their item counts."""
        from vitdex.training.curate import list_datasets

        page = list_datasets(sessions, limit=limit, offset=offset)
        return DatasetsPage.of({"limit": limit, "offset": offset, **page})

    @get(
        "/{dataset_id:int}",
        sync_to_thread=True,
        operation_id="getDataset",
        summary="Get one dataset",
        description="One dataset with every candidate, in or out, and why.",
    )
    def get_one(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        dataset_id: Id,
        role: Annotated[
            Literal["instance", "class"] | None, QueryParameter(description="Only this role")
        ] = None,
        resolution: Annotated[
            int,
            QueryParameter(ge=256, le=2048, description="Base resolution of the bucket histogram"),
        ] = 512,
    ) -> DatasetView:
        """One dataset with every candidate, in or out, and why; and how the included
        instance images fall into aspect-ratio buckets at ``resolution``."""
        from vitdex.training.curate import show_dataset

        view = show_dataset(sessions, dataset_id, role=role, resolution=resolution)
        return DatasetView.of(view)

    @patch(
        "/{dataset_id:int}",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        raises=[NotFound],
        operation_id="updateDataset",
        summary="Change a dataset's words, prompts or crop mode",
        description=(
            "Set the trigger word, class word, crop mode, prompt or class prompt; a prompt "
            "made from the old words follows new ones."
        ),
    )
    def update(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        dataset_id: Id,
        data: JSONBody[DatasetPatchIn],
    ) -> DatasetOut:
        """Set the trigger word, class word, crop mode, prompt or class prompt; a prompt
        made from the old words follows new ones."""
        from vitdex.training.curate import update_dataset

        changed = update_dataset(
            sessions,
            dataset_id,
            trigger_word=data.trigger_word,
            class_word=data.class_word,
            crop_mode=data.crop_mode,
            prompt=data.prompt,
            class_prompt=data.class_prompt,
        )
        return DatasetOut.of(changed)

    @get(
        "/{dataset_id:int}/captions",
        sync_to_thread=True,
        operation_id="listDatasetCaptions",
        summary="List a dataset's captions",
        description="Every item's effective caption, and whether it is its own or the default.",
    )
    def captions(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        dataset_id: Id,
        role: Annotated[
            Literal["instance", "class"] | None, QueryParameter(description="Only this role")
        ] = None,
    ) -> DatasetCaptions:
        """Every item's effective caption, and whether it is its own or the default."""
        from vitdex.training.curate import list_captions

        return DatasetCaptions.of(list_captions(sessions, dataset_id, role=role))

    @post(
        "/{dataset_id:int}/captions/replace",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        raises=[NotFound],
        operation_id="replaceDatasetCaptions",
        summary="Find and replace in a dataset's captions",
        description=(
            "Plain text or a regular expression over the effective captions; ``dry_run`` "
            "counts and shows the changes without writing them."
        ),
    )
    def replace(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        dataset_id: Id,
        data: JSONBody[ReplaceIn],
    ) -> CaptionsReplaced:
        """Plain text or a regular expression over the effective captions; ``dry_run``
        counts and shows the changes without writing them."""
        from vitdex.training.curate import replace_captions

        result = replace_captions(
            sessions,
            dataset_id,
            data.find,
            data.replace,
            regex=data.regex,
            role=data.role,
            dry_run=data.dry_run,
        )
        return CaptionsReplaced.of(result)

    @post(
        "/{dataset_id:int}/include",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        operation_id="includeDatasetImages",
        summary="Add images to a dataset",
        description="Include images by hand (any catalog image; a new one joins as ``role``).",
    )
    def include(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        dataset_id: Id,
        data: JSONBody[ImageIdsIn],
    ) -> DatasetChanged:
        """Include images by hand (any catalog image; a new one joins as ``role``)."""
        from vitdex.training.curate import include_images

        ids = _check_ids(data.image_ids, "image_ids")
        return DatasetChanged.of(include_images(sessions, dataset_id, ids, role=data.role))

    @post(
        "/{dataset_id:int}/exclude",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        operation_id="excludeDatasetImages",
        summary="Remove images from a dataset",
        description="Exclude candidates by hand.",
    )
    def exclude(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        dataset_id: Id,
        data: JSONBody[ImageIdsIn],
    ) -> DatasetChanged:
        """Exclude candidates by hand."""
        from vitdex.training.curate import exclude_images

        changed = exclude_images(sessions, dataset_id, _check_ids(data.image_ids, "image_ids"))
        return DatasetChanged.of(changed)

    @patch(
        "/{dataset_id:int}/items/{image_id:int}",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        raises=[NotFound],
        operation_id="setDatasetItemCaption",
        summary="Set an item's caption",
        description=(
            "Caption one photo by hand (null: back to the prompt); the next export writes it."
        ),
    )
    def set_caption(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        dataset_id: Id,
        image_id: ImageId,
        data: JSONBody[CaptionIn],
    ) -> DatasetItemOut:
        """Caption one photo by hand (null: back to the prompt); the next export writes it."""
        from vitdex.training.curate import set_caption

        item = set_caption(sessions, dataset_id, image_id, data.caption, role=data.role)
        return DatasetItemOut.of(item)

    @post(
        "/{dataset_id:int}/export",
        status_code=HTTP_202_ACCEPTED,
        sync_to_thread=True,
        raises=[Forbidden, Conflict, Unavailable],
        operation_id="exportDataset",
        summary="Export a dataset",
        description=(
            "Queue writing square crops, captions and a kohya ``dataset.toml``; the job's "
            "progress counts images and its ``counts`` hold the result when it succeeds."
        ),
    )
    def export(
        self,
        settings: NamedDependency[Settings],
        sessions: NamedDependency[sessionmaker[Session]],
        services: NamedDependency[Services],
        dataset_id: Id,
        data: JSONBody[ExportIn | None] = None,
    ) -> JobQueued:
        """Queue writing square crops, captions and a kohya ``dataset.toml``; the job's
        progress counts images and its ``counts`` hold the result when it succeeds."""
        from vitdex.training.export import enqueue_export

        body = data or ExportIn()
        job = enqueue_export(
            settings,
            sessions,
            dataset_id,
            body.path,
            resolution=body.resolution,
            num_repeats=body.num_repeats,
            class_repeats=body.class_repeats,
            detect_faces=body.detect_faces,
        )
        services.queue.submit(job["id"], kind="export")
        return JobQueued(job=JobOut.of(job))

    @delete(
        "/{dataset_id:int}",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        operation_id="deleteDataset",
        summary="Delete a dataset",
        description="Delete a dataset and its items (photos and exported files stay).",
    )
    def remove(
        self, sessions: NamedDependency[sessionmaker[Session]], dataset_id: Id
    ) -> DatasetDeleted:
        """Delete a dataset and its items (photos and exported files stay)."""
        from vitdex.training.curate import delete_dataset

        return DatasetDeleted.of(delete_dataset(sessions, dataset_id))
