"""What the search service answers: one hit type, a query's hits, an image's labels.

These are the types the API serialises as they are, so they hold what a caller shows, in
the form it is shown: scores rounded, capture times as the camera's clock read them. This
module imports nothing heavy: the API builds its schemas from it without loading the
model code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    from vitdex.db.models import Image

#: Decimal places kept of a score: float32 vectors hold about seven significant digits.
SCORE_PLACES = 6


def camera_time(value: datetime | None) -> str | None:
    """A capture time as the camera's clock showed it: ISO 8601 with no UTC offset, since
    EXIF's DateTimeOriginal carries none (it is not an RFC 3339 ``date-time``)."""
    return None if value is None else value.replace(tzinfo=None).isoformat()


class PhotoFacts(TypedDict):
    """What a hit and an image page show of a photo besides its path."""

    width: int | None
    height: int | None
    format: str | None
    #: Capture time by the camera's clock, ISO 8601 without an offset (EXIF has none).
    taken_at: str | None
    camera_make: str | None
    camera_model: str | None


def photo_facts(img: Image) -> PhotoFacts:
    """The :class:`PhotoFacts` of a catalog image."""
    return PhotoFacts(
        width=img.width,
        height=img.height,
        format=img.format,
        taken_at=camera_time(img.taken_at),
        camera_make=img.camera_make,
        camera_model=img.camera_model,
    )


@dataclass
class LabelScore:
    """A predicted label and its probability."""

    label: str
    score: float


def label_scores(labels: Sequence[tuple[str, float]]) -> list[LabelScore]:
    """``(label, probability)`` pairs as :class:`LabelScore`, rounded like scores."""
    return [LabelScore(label, round(float(score), SCORE_PLACES)) for label, score in labels]


@dataclass
class Hit:
    """One neighbour with the metadata a caller usually shows."""

    image_id: int
    path: str
    #: Similarity to the query (higher is closer), rounded to six places.
    score: float
    width: int | None
    height: int | None
    format: str | None
    #: Capture time by the camera's clock, ISO 8601 without an offset (EXIF has none).
    taken_at: str | None
    camera_make: str | None
    camera_model: str | None
    labels: list[LabelScore]


@dataclass
class QueryResult:
    """Neighbours of one query (a file, an upload, a catalog id, or several examples
    combined), one page of them."""

    query: str
    image_id: int | None
    space: str
    hits: list[Hit]
    #: Where the next page starts (an ``offset``), or None when no hit follows this page
    #: (none at all, or none at or above the query's ``min_score``).
    next_offset: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


@dataclass
class Classification:
    """Top labels of one image."""

    query: str
    labels: list[LabelScore]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)
