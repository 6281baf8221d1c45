"""Browsing the catalog: image pages, one image, its thumbnail, its file, its neighbours."""

from __future__ import annotations

import functools
import mimetypes
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Annotated, Any, cast

import anyio.to_thread
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import Parameter
from litestar.response import File
from litestar.types import PathType
from litestar.types.file_types import FileInfo, FileSystemProtocol
from sqlalchemy.orm import Session, sessionmaker

from vitdex.api.controllers.search import (
    K,
    MinScore,
    Offset,
    Space,
    filter_dependency,
    run_similar,
)
from vitdex.api.deps import Services
from vitdex.api.errors import Conflict, Unavailable, Unprocessable
from vitdex.api.schemas import (
    FilterNote,
    ImageOut,
    ImagesPage,
    LabelCount,
    LabelsOut,
    SimilarOut,
)
from vitdex.config import Settings
from vitdex.db.models import INT64_MAX, ImageStatus
from vitdex.db.tags import TagStore
from vitdex.errors import ForbiddenError, NotFoundError
from vitdex.filters import SearchFilter
from vitdex.indexer.thumbnails import MAX_SIZE, MIN_SIZE, ensure_thumbnail
from vitdex.paths import open_confined
from vitdex.search import catalog

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


class _ConfinedFiles:
    """Litestar's file access, through :func:`vitdex.paths.open_confined` only.

    The response opens the file again when it streams the body; opening it the same
    checked way means a link swapped in after the handler's check is refused, not sent.
    """

    def __init__(self, within: Sequence[Path]) -> None:
        self.within = within

    def info(self, path: PathType, **kwargs: Any) -> FileInfo:  # noqa: ARG002 (protocol)
        """Facts of the file as opened (never of a link's target outside)."""
        with open_confined(path, self.within) as handle:
            st = os.fstat(handle.fileno())
        return {
            "created": st.st_ctime,
            "gid": st.st_gid,
            "ino": st.st_ino,
            "islink": False,
            "mode": st.st_mode,
            "mtime": st.st_mtime,
            "name": str(path),
            "nlink": st.st_nlink,
            "size": st.st_size,
            "type": "file" if stat.S_ISREG(st.st_mode) else "other",
            "uid": st.st_uid,
        }

    def open(
        self,
        file: PathType,
        mode: str = "rb",
        buffering: int = -1,  # noqa: ARG002 (the protocol's; the file is read in chunks)
    ) -> IO[bytes]:
        """The file opened for binary reading, or the refusal."""
        if mode != "rb":
            raise ValueError(f"photo files are opened read-only, not {mode!r}")
        return open_confined(file, self.within)


class ImagesController(Controller):
    """``/api/v1/images`` and ``/api/v1/labels``."""

    path = "/"
    tags: Sequence[str] = ["images"]
    dependencies = filter_dependency

    @get(
        "/images",
        sync_to_thread=True,
        operation_id="listImages",
        summary="List catalog images",
        description=(
            "Catalog images matching the filters, newest photo first, with the total; each "
            "with its labels and tags."
        ),
    )
    def list_images(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        flt: NamedDependency[SearchFilter],
        status: Status = None,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 50,
        offset: Annotated[int, Parameter(ge=0, le=INT64_MAX)] = 0,
    ) -> ImagesPage:
        """Catalog images matching the filters, newest photo first, with the total."""
        total, images = catalog.list_images(
            sessions, flt, status=status.value if status else None, limit=limit, offset=offset
        )
        notes = catalog.filter_misses(sessions, flt) if total == 0 else []
        tags = TagStore(sessions).of_images([i.image.id for i in images])
        return ImagesPage(
            total=total,
            limit=limit,
            offset=offset,
            images=[ImageOut.of(i, tags.get(i.image.id)) for i in images],
            filter_notes=[FilterNote.of(m) for m in notes],
        )

    @get(
        "/images/{image_id:int}",
        sync_to_thread=True,
        operation_id="getImage",
        summary="Get one image",
        description="One catalog image with its labels and tags.",
    )
    def get_image(
        self, sessions: NamedDependency[sessionmaker[Session]], image_id: ImageId
    ) -> ImageOut:
        """One catalog image with its labels and tags."""
        found = catalog.get_image(sessions, image_id)
        return ImageOut.of(found, TagStore(sessions).of_images([image_id]).get(image_id))

    @get(
        "/images/{image_id:int}/thumbnail",
        sync_to_thread=True,
        media_type="image/jpeg",
        raises=[Unprocessable],
        operation_id="getImageThumbnail",
        summary="Get an image's thumbnail",
        description=(
            "A JPEG thumbnail, made once and then served from the disk cache. 403 when the "
            "photo's path now leads outside its library and the allowed roots."
        ),
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
        """A JPEG thumbnail, made once and then served from the disk cache.

        403 when the photo's path now leads outside its library and the allowed roots.
        """
        img, within = catalog.photo(sessions, image_id, settings.api.allowed_roots)
        path = ensure_thumbnail(
            settings.storage.home,
            image_id,
            Path(img.path),
            img.sha256,
            size,
            within=within,
            max_megapixels=settings.index.max_megapixels,
        )
        return File(
            path,
            media_type="image/jpeg",
            content_disposition_type="inline",
            filename=f"{image_id}-{size}.jpg",
        )

    # The media type follows the file's format; the document says so with a range.
    @get(
        "/images/{image_id:int}/file",
        sync_to_thread=True,
        media_type="*/*",
        operation_id="getImageFile",
        summary="Download an image's original file",
        description=(
            "The original file, streamed, with its content type. Only a regular file that "
            "resolves inside its library or an allowed root is sent (403 otherwise): a photo "
            "replaced by a link to ``/etc/passwd`` is refused."
        ),
    )
    def file(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        settings: NamedDependency[Settings],
        image_id: ImageId,
    ) -> File:
        """The original file, streamed, with its content type.

        Only a regular file that resolves inside its library or an allowed root is sent
        (403 otherwise): a photo replaced by a link to ``/etc/passwd`` is refused.
        """
        img, within = catalog.photo(sessions, image_id, settings.api.allowed_roots)
        path = Path(img.path)
        try:
            with open_confined(path, within) as handle:
                found = os.fstat(handle.fileno())
        except (FileNotFoundError, NotADirectoryError):
            raise NotFoundError(f"the file of image {image_id} is gone: {img.path}") from None
        except OSError as exc:
            raise ForbiddenError(
                f"cannot read the file of image {image_id}: {exc.strerror}"
            ) from None
        media_type = (
            _MEDIA_TYPES.get(img.format or "")
            or mimetypes.guess_type(path.name)[0]
            or "application/octet-stream"
        )
        return File(
            path,
            media_type=media_type,
            content_disposition_type="inline",
            filename=path.name,
            stat_result=found,
            file_system=cast(FileSystemProtocol, _ConfinedFiles(within)),
        )

    @get(
        "/images/{image_id:int}/similar",
        raises=[Conflict, Unavailable],
        operation_id="listSimilarImages",
        summary="Find images similar to a catalog image",
        description="Neighbours of a catalog image (same parameters as ``POST /api/v1/similar``).",
    )
    async def similar(
        self,
        services: NamedDependency[Services],
        flt: NamedDependency[SearchFilter],
        image_id: ImageId,
        k: K = 10,
        offset: Offset = 0,
        space: Space = None,
        min_score: MinScore = None,
    ) -> SimilarOut:
        """Neighbours of a catalog image (same parameters as ``POST /api/v1/similar``)."""
        call = functools.partial(
            run_similar,
            services,
            image_id=image_id,
            k=k,
            offset=offset,
            space=space,
            flt=flt,
            min_score=min_score,
        )
        return await anyio.to_thread.run_sync(call)

    @get(
        "/labels",
        sync_to_thread=True,
        operation_id="listLabels",
        summary="List predicted labels with counts",
        description="Predicted labels with the number of images carrying each, most common first.",
    )
    def labels(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        limit: Annotated[int | None, Parameter(ge=1, le=100_000)] = None,
    ) -> LabelsOut:
        """Predicted labels with the number of images carrying each, most common first."""
        counts = catalog.label_counts(sessions, limit)
        return LabelsOut(labels=[LabelCount(label, n) for label, n in counts])
