"""What a search may be restricted to, and the metadata each backend filters on.

The bottom of the layers: the catalog (which resolves a filter to ids in SQL) and the
vector stores (which apply it to payloads) both use these, and neither imports the other.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "FilterMiss",
    "SearchFilter",
    "close_values",
    "image_payload",
    "split_head_label",
    "tag_key",
]


@dataclass(frozen=True)
class SearchFilter:
    """Metadata conditions every backend applies the same way (all given ones must hold).

    FAISS gets them as ``allowed_ids`` resolved in SQL; Qdrant as payload filters over
    the payload written at upsert (see :func:`image_payload`).

    Camera make and model match ignoring case: EXIF says "Apple" or "NIKON CORPORATION",
    people type "apple". SQL compares ``lower()`` of both sides; a payload backend
    matches exact values, so the search layer first looks up which stored spellings the
    value stands for (``camera_make_spellings``) and hands the store those.
    """

    library_ids: tuple[int, ...] = ()
    # taken_after is inclusive and taken_before exclusive, so consecutive ranges tile.
    #: A folder; images anywhere below it match (whole path components only).
    path_prefix: str | None = None
    taken_after: datetime | None = None
    taken_before: datetime | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    #: A predicted label among the image's stored top labels (exact: the model's names).
    label: str | None = None
    #: The stored spellings ``camera_make`` matches ignoring case, as the catalog found
    #: them; None: not looked up (a payload backend then matches the value as given).
    camera_make_spellings: tuple[str, ...] | None = None
    #: Likewise for ``camera_model``.
    camera_model_spellings: tuple[str, ...] | None = None
    #: Tags the image must carry, every one of them (compared by :func:`tag_key`).
    tags: tuple[str, ...] = ()
    #: Leave out photos marked as duplicates (a reviewed group kept another member).
    hide_duplicates: bool = False
    #: Labels a head put on the image, each ``HEAD:LABEL`` (every one must hold; the
    #: label compares ignoring case, see :func:`split_head_label`).
    head_labels: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        """Whether no condition is set."""
        return self == SearchFilter()

    @property
    def sql_only(self) -> bool:
        """Whether a condition lives only in the catalog (tags, duplicate marks, head
        labels).

        Those change with every click of a reviewer, so they are never copied into a
        store's payloads: a payload backend gets the filter resolved in SQL to ids.
        """
        return bool(self.tags) or self.hide_duplicates or bool(self.head_labels)


#: How each filter field that names a value is called in messages.
VALUE_FIELDS = {
    "camera_make": "camera make",
    "camera_model": "camera model",
    "label": "label",
    "tags": "tag",
    "head_labels": "head label",
}


@dataclass(frozen=True)
class FilterMiss:
    """A filter value that no photo in the catalog has, and what the user may have meant.

    A filter that quietly matches nothing looks like "no similar photos"; naming the
    value and its close spellings turns a typo into a one-step fix.
    """

    #: The filter field (``camera_make``, ``camera_model`` or ``label``).
    field: str
    value: str
    #: Stored values that look like ``value`` (closest first).
    close: tuple[str, ...]
    #: When none is close: the most common stored values, so the user sees what exists.
    common: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        """One line for people: what matched nothing and what to try instead."""
        what = f"no photo has {VALUE_FIELDS.get(self.field, self.field)} {self.value!r}"
        if self.close:
            return f"{what}; close values: {', '.join(self.close)}"
        if self.common:
            return f"{what}; the catalog has: {', '.join(self.common)}"
        return f"{what}; no photo in the catalog has any {VALUE_FIELDS.get(self.field)}"


def tag_key(name: str) -> str:
    """What makes two tag names the same tag: case-folded, spaces trimmed and collapsed
    ("My  Dog " and "my dog" are one tag)."""
    return " ".join(name.split()).casefold()


def split_head_label(value: str) -> tuple[str, str]:
    """``HEAD:LABEL`` as (head name, label); raises ValueError naming the form when the
    colon or either side is missing. Head names have no colon, labels may."""
    head, sep, label = value.partition(":")
    head, label = head.strip(), label.strip()
    if not sep or not head or not label:
        raise ValueError(f"head label {value!r} is not HEAD:LABEL (e.g. kind:receipt)")
    return head, label


def close_values(value: str, candidates: Iterable[str], n: int = 5) -> tuple[str, ...]:
    """Up to ``n`` of ``candidates`` that look like ``value``, closest first.

    Compared ignoring case: values that contain it (or that it contains) come first,
    shortest first ("tabby" → "tabby, tabby cat"), then near spellings by difflib's ratio
    ("aple" → "Apple").
    """
    wanted = value.casefold().strip()
    by_folded: dict[str, str] = {}
    for candidate in candidates:
        by_folded.setdefault(candidate.casefold(), candidate)
    if not wanted:
        return ()

    def contains(f: str) -> bool:
        return len(wanted) >= 2 and (wanted in f or (len(f) >= 3 and f in wanted))

    inside = sorted(filter(contains, by_folded), key=lambda f: (len(f), f))
    near = difflib.get_close_matches(wanted, list(by_folded), n=n, cutoff=0.6)
    ordered = dict.fromkeys([*inside, *near])
    return tuple(by_folded[f] for f in list(ordered)[:n])


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
