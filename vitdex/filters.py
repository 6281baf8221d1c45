"""What a search may be restricted to, and the metadata each backend filters on.

The bottom of the layers: the catalog (which resolves a filter to ids in SQL) and the
vector stores (which apply it to payloads) both use these, and neither imports the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["SearchFilter", "image_payload"]


@dataclass(frozen=True)
class SearchFilter:
    """Metadata conditions every backend applies the same way (all given ones must hold).

    FAISS gets them as ``allowed_ids`` resolved in SQL; Qdrant as payload filters over
    the payload written at upsert (see :func:`image_payload`).
    """

    library_ids: tuple[int, ...] = ()
    # taken_after is inclusive and taken_before exclusive, so consecutive ranges tile.
    #: A folder; images anywhere below it match (whole path components only).
    path_prefix: str | None = None
    taken_after: datetime | None = None
    taken_before: datetime | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    #: A predicted label among the image's stored top labels.
    label: str | None = None

    def is_empty(self) -> bool:
        """Whether no condition is set."""
        return self == SearchFilter()


def image_payload(
    *,
    library_id: int,
    path: str,
    taken_at: datetime | None,
    camera_make: str | None,
    camera_model: str | None,
    labels: Sequence[str],
) -> dict[str, Any]:
    """The filterable metadata of one image, as backends with payloads store it.

    ``dirs`` lists every ancestor folder of the path, so a path-prefix filter is an exact
    keyword match on folder boundaries; ``taken_at`` is seconds since the epoch of the
    EXIF wall-clock time read as UTC (EXIF has no time zone).
    """
    parts = path.split("/")
    dirs = ["/".join(parts[:i]) or "/" for i in range(1, len(parts))]
    return {
        "library_id": int(library_id),
        "path": path,
        "dirs": dirs,
        "taken_at": taken_at.replace(tzinfo=UTC).timestamp() if taken_at else None,
        "camera_make": camera_make,
        "camera_model": camera_model,
        "labels": list(labels),
    }
