"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vitdex.db.models import Image
    from vitdex.search.service import Hit


def camera_time(value: datetime | None) -> str | None:
    """A capture time as the camera's clock showed it: ISO 8601 with no UTC offset, since
    EXIF's DateTimeOriginal carries none (it is not an RFC 3339 ``date-time``)."""
    return None if value is None else value.replace(tzinfo=None).isoformat()


@dataclass
class LabelScore:
    """A predicted label and its probability."""

    label: str
    score: float


@dataclass
class HitOut:
    """One neighbour with its metadata."""

    image_id: int
    path: str
    score: float
    width: int | None = None
    height: int | None = None
    format: str | None = None
    #: Capture time by the camera's clock, ISO 8601 without an offset (EXIF has none).
    taken_at: str | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    labels: list[LabelScore] = field(default_factory=list)

    @classmethod
    def of(cls, hit: Hit) -> HitOut:
        """From a search service hit."""
        return cls(
            image_id=hit.image_id,
            path=hit.path,
            score=round(hit.score, 6),
            width=hit.width,
            height=hit.height,
            format=hit.format,
            taken_at=camera_time(hit.taken_at),
            camera_make=hit.camera_make,
            camera_model=hit.camera_model,
            labels=[LabelScore(lab, round(s, 6)) for lab, s in hit.labels],
        )


@dataclass
class SimilarOut:
    """Neighbours of one query, one page of them."""

    query: str
    image_id: int | None
    space: str
    k: int
    offset: int
    hits: list[HitOut]


@dataclass
class SimilarById:
    """JSON body of ``POST /api/v1/similar`` asking by catalog id."""

    image_id: int


@dataclass
class ClassifyOut:
    """Top labels of an uploaded image."""

    query: str
    labels: list[LabelScore]


@dataclass
class ImageOut:
    """A catalog image."""

    id: int
    library_id: int
    path: str
    status: str
    sha256: str | None
    size: int
    width: int | None
    height: int | None
    format: str | None
    #: Capture time by the camera's clock, ISO 8601 without an offset (EXIF has none).
    taken_at: str | None
    camera_make: str | None
    camera_model: str | None
    gps_lat: float | None
    gps_lon: float | None
    error: str | None
    indexed_at: datetime | None
    labels: list[LabelScore] = field(default_factory=list)

    @classmethod
    def of(cls, img: Image, labels: list[tuple[str, float]]) -> ImageOut:
        """From a catalog row and its labels."""
        return cls(
            id=img.id,
            library_id=img.library_id,
            path=img.path,
            status=img.status,
            sha256=img.sha256,
            size=img.size,
            width=img.width,
            height=img.height,
            format=img.format,
            taken_at=camera_time(img.taken_at),
            camera_make=img.camera_make,
            camera_model=img.camera_model,
            gps_lat=img.gps_lat,
            gps_lon=img.gps_lon,
            error=img.error,
            indexed_at=img.indexed_at,
            labels=[LabelScore(lab, round(s, 6)) for lab, s in labels],
        )


@dataclass
class ImagesPage:
    """A page of catalog images, newest first."""

    total: int
    limit: int
    offset: int
    images: list[ImageOut]


@dataclass
class LabelCount:
    """A predicted label and how many images carry it."""

    label: str
    count: int


@dataclass
class LabelsOut:
    """Labels, most common first."""

    labels: list[LabelCount]


@dataclass
class HealthOut:
    """The process answers."""

    status: str


@dataclass
class ReadyOut:
    """Each dependency's state (``ok`` or the reason it failed)."""

    ready: bool
    checks: dict[str, str]
