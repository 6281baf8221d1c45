"""Bodies of catalog browsing: images, their labels, label counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from vitdex.api.schemas.search import FilterNote
from vitdex.search.catalog import LabelledImage
from vitdex.search.results import LabelScore, photo_facts


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
    labels: list[LabelScore]
    #: The tags people put on it, by name (ignoring case).
    tags: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, found: LabelledImage, tags: list[str] | None = None) -> ImageOut:
        """From a catalog image, its labels and its tags."""
        img = found.image
        return cls(
            id=img.id,
            library_id=img.library_id,
            path=img.path,
            status=img.status,
            sha256=img.sha256,
            size=img.size,
            gps_lat=img.gps_lat,
            gps_lon=img.gps_lon,
            error=img.error,
            indexed_at=img.indexed_at,
            labels=found.labels,
            tags=list(tags or ()),
            **photo_facts(img),
        )


@dataclass
class ImagesPage:
    """A page of catalog images, newest first."""

    total: int
    limit: int
    offset: int
    images: list[ImageOut]
    #: Set when nothing matches because a filter value matches no photo.
    filter_notes: list[FilterNote] = field(default_factory=list)


@dataclass
class LabelCount:
    """A predicted label and how many images carry it."""

    label: str
    count: int


@dataclass
class LabelsOut:
    """Labels, most common first."""

    labels: list[LabelCount]
