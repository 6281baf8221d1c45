"""Similar and classify queries: parse the request, call the search service off the loop."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
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
from vitdex.api.validation import reads_as_json
from vitdex.db.models import INT64_MAX
from vitdex.errors import ConfigError
from vitdex.filters import SearchFilter

#: Largest k + offset one query may ask for.
MAX_DEPTH = 10_000

K = Annotated[int, Parameter(ge=1, le=1000, description="Number of neighbours to return")]
Offset = Annotated[
    int, Parameter(ge=0, le=MAX_DEPTH - 1000, description="Neighbours to skip (paging)")
]
Space = Annotated[str | None, Parameter(description="Vector space (default: the first configured)")]
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
    )


filter_dependency = {"flt": Provide(provide_filter, sync_to_thread=False)}


@dataclass
class Upload:
    """A multipart upload with the image in the field ``file``."""

    file: UploadFile


def run_similar(
    services: Services,
    *,
    image_id: int | None = None,
    upload: tuple[str, bytes] | None = None,
    k: int,
    offset: int,
    space: str | None,
    flt: SearchFilter,
) -> SimilarOut:
    """Neighbours of an id or an uploaded image, one page of them (blocking: run in a thread)."""
    ids = [image_id] if image_id is not None else []
    uploads = [upload] if upload is not None else []
    (result,) = services.search.similar(
        ids=ids, uploads=uploads, k=k, offset=offset, space=space, filter=flt
    )
    notes = services.search.filter_misses(flt) if not result.hits else []
    return SimilarOut(
        query=result.query,
        image_id=result.image_id,
        space=result.space,
        k=k,
        offset=offset,
        hits=result.hits,
        filter_notes=[FilterNote.of(m) for m in notes],
    )


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


async def _similar_body(
    request: Request[Any, Any, Any],
) -> tuple[int | None, tuple[str, bytes] | None]:
    """An uploaded file or ``{"image_id": N}``, by the request's content type (none, or
    curl's default, reads as JSON as on every JSON route)."""
    content_type, _ = request.content_type
    if content_type == RequestEncodingType.MULTI_PART:
        form = await request.form()
        return None, await _read_upload(form.get("file"))
    if reads_as_json(content_type):
        # The app's request class decodes it: too deep, NUL or past int64 is a 400 there.
        try:
            body = await request.json()
        except SerializationException:
            raise ValidationException("the JSON body is not valid JSON") from None
        image_id = body.get("image_id") if isinstance(body, dict) else None
        if (
            not isinstance(image_id, int)
            or isinstance(image_id, bool)
            or not 1 <= image_id <= INT64_MAX
        ):
            raise ValidationException(
                f'send {{"image_id": N}} with N an integer between 1 and {INT64_MAX}'
            )
        return image_id, None
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
            'Neighbours of an uploaded image (multipart ``file``) or of ``{"image_id": N}``.'
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
    ) -> SimilarOut:
        """Neighbours of an uploaded image (multipart ``file``) or of ``{"image_id": N}``."""
        image_id, upload = await _similar_body(request)
        call = functools.partial(
            run_similar,
            services,
            image_id=image_id,
            upload=upload,
            k=k,
            offset=offset,
            space=space,
            flt=flt,
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
