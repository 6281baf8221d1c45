"""Browsing the catalog: image pages, one image, its thumbnail, its file, its neighbours."""

from __future__ import annotations

import functools
import mimetypes
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import anyio.to_thread
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import Parameter
from litestar.response import File
from sqlalchemy.orm import Session, sessionmaker

from vitdex.api.controllers.search import (
    K,
    Offset,
    Space,
    filter_dependency,
    run_similar,
)
from vitdex.api.deps import Services
from vitdex.api.errors import Conflict, Unavailable, Unprocessable
from vitdex.api.schemas import ImageOut, ImagesPage, LabelCount, LabelsOut, SimilarOut
from vitdex.config import Settings
from vitdex.db import browse, repo
from vitdex.db.models import INT64_MAX, ImageStatus
from vitdex.errors import NotFoundError
from vitdex.search.store import SearchFilter
from vitdex.thumbnails import MAX_SIZE, MIN_SIZE, ensure_thumbnail

ImageId = Annotated[int, Parameter(ge=1, le=INT64_MAX, description="Catalog image id")]
Status = Annotated[
    ImageStatus | None, Parameter(description="Only images with this indexing status")
]

#: Pillow format name -> media type, for formats mimetypes may not know by suffix.
_MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "TIFF": "image/tiff",
    "BMP": "image/bmp",
    "HEIF": "image/heif",
    "AVIF": "image/avif",
}


class ImagesController(Controller):
    """``/api/v1/images`` and ``/api/v1/labels``."""

    path = "/"
    tags: Sequence[str] = ["images"]
    dependencies = filter_dependency

    @get("/images", sync_to_thread=True)
    def list_images(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        flt: NamedDependency[SearchFilter],
        status: Status = None,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 50,
        offset: Annotated[int, Parameter(ge=0, le=INT64_MAX)] = 0,
    ) -> ImagesPage:
        """Catalog images matching the filters, newest photo first, with the total."""
        with sessions() as session:
            page = browse.list_images(
                session, flt, status=status.value if status else None, limit=limit, offset=offset
            )
            labels = repo.labels_of(session, [img.id for img in page.images])
        return ImagesPage(
            total=page.total,
            limit=limit,
            offset=offset,
            images=[ImageOut.of(img, labels.get(img.id, [])) for img in page.images],
        )

    @get("/images/{image_id:int}", sync_to_thread=True)
    def get_image(
        self, sessions: NamedDependency[sessionmaker[Session]], image_id: ImageId
    ) -> ImageOut:
        """One catalog image with its labels."""
        with sessions() as session:
            img = repo.get_image(session, image_id)
            labels = repo.labels_of(session, [image_id]).get(image_id, [])
        return ImageOut.of(img, labels)

    @get(
        "/images/{image_id:int}/thumbnail",
        sync_to_thread=True,
        media_type="image/jpeg",
        raises=[Unprocessable],
    )
    def thumbnail(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        settings: NamedDependency[Settings],
        image_id: ImageId,
        size: Annotated[
            int, Parameter(ge=MIN_SIZE, le=MAX_SIZE, description="Longest side in pixels")
        ] = 256,
    ) -> File:
        """A JPEG thumbnail, made once and then served from the disk cache."""
        with sessions() as session:
            img = repo.get_image(session, image_id)
        path = ensure_thumbnail(
            settings.storage.home,
            image_id,
            Path(img.path),
            img.sha256,
            size,
            max_megapixels=settings.index.max_megapixels,
        )
        return File(
            path,
            media_type="image/jpeg",
            content_disposition_type="inline",
            filename=f"{image_id}-{size}.jpg",
        )

    # The media type follows the file's format; the document says so with a range.
    @get("/images/{image_id:int}/file", sync_to_thread=True, media_type="*/*")
    def file(self, sessions: NamedDependency[sessionmaker[Session]], image_id: ImageId) -> File:
        """The original file, streamed, with its content type."""
        with sessions() as session:
            img = repo.get_image(session, image_id)
        path = Path(img.path)
        if not path.is_file():
            raise NotFoundError(f"the file of image {image_id} is gone: {img.path}")
        media_type = (
            _MEDIA_TYPES.get(img.format or "")
            or mimetypes.guess_type(path.name)[0]
            or "application/octet-stream"
        )
        return File(
            path, media_type=media_type, content_disposition_type="inline", filename=path.name
        )

    @get("/images/{image_id:int}/similar", raises=[Conflict, Unavailable])
    async def similar(
        self,
        services: NamedDependency[Services],
        flt: NamedDependency[SearchFilter],
        image_id: ImageId,
        k: K = 10,
        offset: Offset = 0,
        space: Space = None,
    ) -> SimilarOut:
        """Neighbours of a catalog image (same parameters as ``POST /api/v1/similar``)."""
        call = functools.partial(
            run_similar, services, image_id=image_id, k=k, offset=offset, space=space, flt=flt
        )
        return await anyio.to_thread.run_sync(call)

    @get("/labels", sync_to_thread=True)
    def labels(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        limit: Annotated[int | None, Parameter(ge=1, le=100_000)] = None,
    ) -> LabelsOut:
        """Predicted labels with the number of images carrying each, most common first."""
        with sessions() as session:
            counts = browse.label_counts(session, limit)
        return LabelsOut(labels=[LabelCount(label, n) for label, n in counts])
