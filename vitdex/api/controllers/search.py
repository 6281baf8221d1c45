"""Similar and classify queries: parse the request, call the search service off the loop."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import datetime
from typing import Annotated, Any

import anyio.to_thread
from litestar import Controller, Request, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency, Provide
from litestar.enums import RequestEncodingType
from litestar.exceptions import ClientException, SerializationException, ValidationException
from litestar.openapi.spec import Example
from litestar.params import Body, Parameter

from vitdex.api.deps import Services
from vitdex.api.errors import (
    Conflict,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    Unprocessable,
    UnsupportedMediaType,
)
from vitdex.api.schemas import Classification, FilterNote, SimilarOut
from vitdex.api.schemas.filters import check_head_labels
from vitdex.api.validation import reads_as_json
from vitdex.db.models import INT64_MAX
from vitdex.errors import ConfigError
from vitdex.filters import FilterMiss, SearchFilter
from vitdex.search.examples import DEFAULT_NEGATIVE_WEIGHT, MAX_NEGATIVE_WEIGHT
from vitdex.search.results import QueryResult

#: Largest k + offset one query may ask for.
MAX_DEPTH = 10_000

K = Annotated[int, Parameter(ge=1, le=1000, description="Number of neighbours to return")]
Offset = Annotated[
    int, Parameter(ge=0, le=MAX_DEPTH - 1000, description="Neighbours to skip (paging)")
]
Space = Annotated[str | None, Parameter(description="Vector space (default: the first configured)")]
MinScore = Annotated[
    float | None,
    Parameter(description="Only hits scoring at least this; pages past k until scores drop"),
]
NegativeWeight = Annotated[
    float,
    Parameter(
        ge=0,
        le=MAX_NEGATIVE_WEIGHT,
        description="w in mean cos(x, positives) - w * mean cos(x, negatives)",
    ),
]
#: Most catalog ids one query may give as examples (each kind), and most uploads.
MAX_EXAMPLES = 100
MAX_UPLOADS = 20
_WHEN = "an ISO date (YYYY-MM-DD, meaning midnight) or date-time (YYYY-MM-DDTHH:MM[:SS])"
_WHEN_EXAMPLES = [
    Example(summary="a date (midnight)", value="2024-01-01"),
    Example(summary="a date-time", value="2024-01-01T13:30:00"),
]


def parse_when(name: str, value: str | None) -> datetime | None:
    """A ``taken_after``/``taken_before`` value as a naive datetime.

    Declared as a plain string, not ``datetime``: Litestar's datetime parameters accept only
    RFC 3339 date-times, while the CLI and README give dates (``2024-01-01``). A zone, when
    given, is dropped: EXIF times are naive wall-clock times, so compare like with like.
    """
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value.strip()).replace(tzinfo=None)
    except ValueError:
        raise ConfigError(f"{name} must be {_WHEN}, got {value!r}") from None


def provide_filter(
    library_id: Annotated[
        list[int] | None, Parameter(description="Library id (repeatable)")
    ] = None,
    folder: Annotated[str | None, Parameter(description="Only images under this folder")] = None,
    taken_after: Annotated[
        str | None, Parameter(description=f"Taken at or after: {_WHEN}", examples=_WHEN_EXAMPLES)
    ] = None,
    taken_before: Annotated[
        str | None,
        Parameter(description=f"Taken before (exclusive): {_WHEN}", examples=_WHEN_EXAMPLES),
    ] = None,
    camera_make: Annotated[str | None, Parameter(description="Camera maker (any case)")] = None,
    camera_model: Annotated[str | None, Parameter(description="Camera model (any case)")] = None,
    label: Annotated[
        str | None, Parameter(description="A predicted label (exact, as /labels lists it)")
    ] = None,
    tag: Annotated[
        list[str] | None,
        Parameter(description="A tag the photo carries (repeatable: every one; any case)"),
    ] = None,
    hide_duplicates: Annotated[
        bool, Parameter(description="Leave out photos marked as duplicates in review")
    ] = False,
    head_label: Annotated[
        list[str] | None,
        Parameter(
            description=(
                "A label a head put on the photo, as HEAD:LABEL, e.g. kind:receipt "
                "(repeatable: every one; the label in any case)"
            )
        ),
    ] = None,
) -> SearchFilter:
    """Dependency: the metadata filter given as query parameters."""
    ids = tuple(library_id or ())
    if any(not 1 <= i <= INT64_MAX for i in ids):
        raise ConfigError(f"library_id must be between 1 and {INT64_MAX}")
    texts = {"folder": folder, "camera_make": camera_make, "camera_model": camera_model}
    texts["label"] = label
    tags = tuple(tag or ())
    for name, value in [*texts.items(), *(("tag", t) for t in tags)]:
        if value is not None and "\x00" in value:
            raise ConfigError(f"{name} must not contain NUL characters")
    if any(not t.strip() for t in tags):
        raise ConfigError("tag must not be empty")
    after = parse_when("taken_after", taken_after)
    before = parse_when("taken_before", taken_before)
    if after and before and after >= before:
        raise ConfigError("taken_after must be earlier than taken_before")
    head_labels = tuple(check_head_labels(list(head_label or ()), "head_label"))
    return SearchFilter(
        library_ids=ids,
        path_prefix=folder or None,
        taken_after=after,
        taken_before=before,
        camera_make=camera_make,
        camera_model=camera_model,
        label=label,
        tags=tags,
        hide_duplicates=hide_duplicates,
        head_labels=head_labels,
    )


filter_dependency = {"flt": Provide(provide_filter, sync_to_thread=False)}


@dataclass
class Upload:
    """A multipart upload with the image in the field ``file``."""

    file: UploadFile


@dataclass
class Examples:
    """The example photos of a similar request: catalog ids and uploads, liked or not."""

    ids: list[int] = dataclass_field(default_factory=list)
    uploads: list[tuple[str, bytes]] = dataclass_field(default_factory=list)
    negative_ids: list[int] = dataclass_field(default_factory=list)
    negative_uploads: list[tuple[str, bytes]] = dataclass_field(default_factory=list)

    @property
    def count(self) -> int:
        """How many examples there are in all."""
        return (
            len(self.ids) + len(self.uploads) + len(self.negative_ids) + len(self.negative_uploads)
        )


def similar_out(
    result: QueryResult, *, k: int, offset: int, min_score: float | None, notes: list[FilterMiss]
) -> SimilarOut:
    """The answer for one page of one query's hits."""
    return SimilarOut(
        query=result.query,
        image_id=result.image_id,
        space=result.space,
        k=k,
        offset=offset,
        hits=result.hits,
        filter_notes=[FilterNote.of(m) for m in notes],
        min_score=min_score,
        next_offset=result.next_offset,
    )


def run_similar(
    services: Services,
    *,
    image_id: int | None = None,
    upload: tuple[str, bytes] | None = None,
    examples: Examples | None = None,
    k: int,
    offset: int,
    space: str | None,
    flt: SearchFilter,
    min_score: float | None = None,
    negative_weight: float = DEFAULT_NEGATIVE_WEIGHT,
    combine: bool = True,
) -> SimilarOut:
    """One page of the neighbours of an id, an upload, or several examples made into one
    query (blocking: run in a thread)."""
    given = examples or Examples()
    ids = [*([image_id] if image_id is not None else []), *given.ids]
    uploads = [*([upload] if upload is not None else []), *given.uploads]
    if not combine and Examples(ids, uploads, given.negative_ids, given.negative_uploads).count > 1:
        raise ConfigError(
            "combine=false searches with one example: send one request per example, or "
            "leave combine on to make the examples one query"
        )
    (result,) = services.search.similar(
        ids=ids,
        uploads=uploads,
        negative_ids=given.negative_ids,
        negative_uploads=given.negative_uploads,
        combine=len(ids) + len(uploads) > 1,
        negative_weight=negative_weight,
        k=k,
        offset=offset,
        space=space,
        filter=flt,
        min_score=min_score,
    )
    notes = services.search.filter_misses(flt) if not result.hits else []
    return similar_out(result, k=k, offset=offset, min_score=min_score, notes=notes)


def run_classify(services: Services, upload: tuple[str, bytes], k: int) -> Classification:
    """Top-k labels of an uploaded image (blocking: run in a thread)."""
    (result,) = services.search.classify(uploads=[upload], k=k)
    return result


async def _read_upload(upload: Any) -> tuple[str, bytes]:
    if not isinstance(upload, UploadFile):
        raise ValidationException("send the image as a multipart file in the field 'file'")
    data = await upload.read()
    await upload.close()
    return upload.filename or "upload", data


def _ids(value: Any, what: str) -> list[int]:
    """``value`` as a list of image ids (one id alone allowed), or a 400 naming ``what``."""
    items = value if isinstance(value, list) else [value]
    if len(items) > MAX_EXAMPLES or not all(
        isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= INT64_MAX for i in items
    ):
        raise ValidationException(
            f"{what} must be image ids (integers between 1 and {INT64_MAX}), "
            f"at most {MAX_EXAMPLES} of them"
        )
    return list(items)


def _form_ids(values: list[Any], what: str) -> list[int]:
    """Ids sent as multipart text fields."""
    ids = []
    for value in values:
        text = value.strip() if isinstance(value, str) else ""
        if not (text.isascii() and text.isdigit()):
            raise ValidationException(f"{what} must be image ids, got {value!r}")
        ids.append(int(text))
    return _ids(ids, what)


async def _similar_body(request: Request[Any, Any, Any]) -> Examples:
    """The examples of a similar request, by its content type (none, or curl's default,
    reads as JSON as on every JSON route).

    JSON: ``{"image_id": N}``, or ``{"image_ids": [...], "negative_ids": [...]}``.
    Multipart: uploads in ``file`` and ``negative_file`` (each repeatable), with catalog
    ids in ``image_id`` and ``negative_id`` fields beside them.
    """
    content_type, _ = request.content_type
    if content_type == RequestEncodingType.MULTI_PART:
        form = await request.form()
        files = form.getall("file", [])
        negative_files = form.getall("negative_file", [])
        if len(files) + len(negative_files) > MAX_UPLOADS:
            raise ValidationException(f"send at most {MAX_UPLOADS} files in one query")
        found = Examples(
            ids=_form_ids(form.getall("image_id", []), "image_id"),
            uploads=[await _read_upload(f) for f in files],
            negative_ids=_form_ids(form.getall("negative_id", []), "negative_id"),
            negative_uploads=[await _read_upload(f) for f in negative_files],
        )
        if not found.uploads and not found.ids:
            raise ValidationException("send the image as a multipart file in the field 'file'")
        return found
    if reads_as_json(content_type):
        # The app's request class decodes it: too deep, NUL or past int64 is a 400 there.
        try:
            body = await request.json()
        except SerializationException:
            raise ValidationException("the JSON body is not valid JSON") from None
        if not isinstance(body, dict) or not ({"image_id", "image_ids"} & body.keys()):
            raise ValidationException(
                f'send {{"image_id": N}} with N an integer between 1 and {INT64_MAX}, or '
                '{"image_ids": [...], "negative_ids": [...]}'
            )
        ids = _ids(body["image_id"], "image_id") if "image_id" in body else []
        ids += _ids(body.get("image_ids", []), "image_ids")
        return Examples(ids=ids, negative_ids=_ids(body.get("negative_ids", []), "negative_ids"))
    raise ClientException(
        "send the image as multipart/form-data (field 'file') or JSON {\"image_id\": N}",
        status_code=415,
    )


class SearchController(Controller):
    """``/api/v1/similar`` and ``/api/v1/classify``."""

    path = "/"
    tags: Sequence[str] = ["search"]
    dependencies = filter_dependency

    @post(
        "/similar",
        status_code=200,
        raises=[
            NotFound,
            Conflict,
            PayloadTooLarge,
            UnsupportedMediaType,
            Unprocessable,
            Unavailable,
        ],
        operation_id="searchSimilar",
        summary="Find similar images to an upload or an id",
        description=(
            'Neighbours of an uploaded image (multipart ``file``) or of ``{"image_id": N}``. '
            'Several examples make ONE query: ``{"image_ids": [...], "negative_ids": [...]}``, '
            "or multipart ``file``/``negative_file`` uploads (repeatable) with ``image_id``/"
            "``negative_id`` fields. Each photo x scores mean cos(x, positives) - "
            "negative_weight * mean cos(x, negatives); the examples are left out. With "
            "``min_score`` only hits scoring at least that are listed, ``k`` a page at a "
            "time: ``next_offset`` is where the next page starts (null: no more)."
        ),
    )
    async def similar(
        self,
        request: Request[Any, Any, Any],
        services: NamedDependency[Services],
        flt: NamedDependency[SearchFilter],
        k: K = 10,
        offset: Offset = 0,
        space: Space = None,
        min_score: MinScore = None,
        negative_weight: NegativeWeight = DEFAULT_NEGATIVE_WEIGHT,
        combine: Annotated[
            bool,
            Parameter(description="Make several examples one query (false: one example only)"),
        ] = True,
    ) -> SimilarOut:
        """Neighbours of an uploaded image (multipart ``file``) or of ``{"image_id": N}``;
        several examples, liked and disliked, make one query."""
        examples = await _similar_body(request)
        call = functools.partial(
            run_similar,
            services,
            examples=examples,
            k=k,
            offset=offset,
            space=space,
            flt=flt,
            min_score=min_score,
            negative_weight=negative_weight,
            combine=combine,
        )
        return await anyio.to_thread.run_sync(call)

    @post(
        "/classify",
        status_code=200,
        raises=[PayloadTooLarge, UnsupportedMediaType, Unprocessable, Unavailable],
        operation_id="classifyImage",
        summary="Classify an uploaded image",
        description="Top-k labels of an uploaded image from the model's classifier.",
    )
    async def classify(
        self,
        data: Annotated[Upload, Body(media_type=RequestEncodingType.MULTI_PART)],
        services: NamedDependency[Services],
        k: Annotated[int, Parameter(ge=1, le=1000, description="Number of labels")] = 5,
    ) -> Classification:
        """Top-k labels of an uploaded image from the model's classifier."""
        upload = await _read_upload(data.file)
        call = functools.partial(run_classify, services, upload, k)
        return await anyio.to_thread.run_sync(call)
