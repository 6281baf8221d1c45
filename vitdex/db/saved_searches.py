"""Similarity queries saved by name: what one holds, and every SQL statement about them.

A saved search holds catalog ids only (positive and negative examples), never uploaded
bytes: running it again means searching with the photos as the catalog holds them today.
Its ``query`` column is the JSON of :class:`SavedQuery`, with the filter under the names
the API's query parameters use. Functions take a :class:`~sqlalchemy.orm.Session` and
leave committing to the caller.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from vitdex.db.models import INT64_MAX, is_id, iso
from vitdex.db.review_models import SavedSearch
from vitdex.db.rows import get_row
from vitdex.errors import ConfigError, ConflictError, NotFoundError
from vitdex.filters import SearchFilter, split_head_label

__all__ = [
    "SavedQuery",
    "check_name",
    "delete_saved",
    "filter_from_json",
    "filter_to_json",
    "find_saved",
    "list_saved",
    "save_search",
    "saved_to_dict",
]

#: Longest name (the column's width).
MAX_NAME = 128


def filter_to_json(flt: SearchFilter) -> dict[str, Any]:
    """A filter as JSON, keyed like the API's query parameters (``folder``, ``tag``...).

    Only the conditions people set are kept: spellings looked up for a payload backend
    are the search layer's business and are looked up again on every run.
    """
    return {
        "library_id": list(flt.library_ids),
        "folder": flt.path_prefix,
        "taken_after": iso(flt.taken_after),
        "taken_before": iso(flt.taken_before),
        "camera_make": flt.camera_make,
        "camera_model": flt.camera_model,
        "label": flt.label,
        "tag": list(flt.tags),
        "hide_duplicates": flt.hide_duplicates,
        "head_label": list(flt.head_labels),
    }


def _text(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"filter {key} must be text, got {value!r}")
    return value or None


def _when(data: Mapping[str, Any], key: str) -> datetime | None:
    text = _text(data, key)
    try:
        return None if text is None else datetime.fromisoformat(text).replace(tzinfo=None)
    except ValueError:
        raise ConfigError(f"filter {key} must be an ISO date or date-time, got {text!r}") from None


def _ids(value: Any, what: str) -> tuple[int, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not all(
        isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= INT64_MAX for i in value
    ):
        raise ConfigError(f"{what} must be a list of image ids, got {value!r}")
    return tuple(dict.fromkeys(value))  # repeated ids count once


def filter_from_json(data: Mapping[str, Any] | None) -> SearchFilter:
    """The :class:`SearchFilter` of :func:`filter_to_json`'s form (missing keys: no
    condition); :class:`ConfigError` for a value of the wrong type."""
    data = data or {}
    tags = data.get("tag") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) and t.strip() for t in tags):
        raise ConfigError(f"filter tag must be a list of tag names, got {tags!r}")
    head_labels = data.get("head_label") or []
    if not isinstance(head_labels, list) or not all(isinstance(h, str) for h in head_labels):
        raise ConfigError(f"filter head_label must be a list of HEAD:LABEL, got {head_labels!r}")
    for value in head_labels:
        try:
            split_head_label(value)
        except ValueError as exc:
            raise ConfigError(f"filter {exc}") from None
    hide = data.get("hide_duplicates", False)
    if not isinstance(hide, bool):
        raise ConfigError(f"filter hide_duplicates must be true or false, got {hide!r}")
    return SearchFilter(
        library_ids=_ids(data.get("library_id"), "filter library_id"),
        path_prefix=_text(data, "folder"),
        taken_after=_when(data, "taken_after"),
        taken_before=_when(data, "taken_before"),
        camera_make=_text(data, "camera_make"),
        camera_model=_text(data, "camera_model"),
        label=_text(data, "label"),
        tags=tuple(tags),
        hide_duplicates=hide,
        head_labels=tuple(head_labels),
    )


def _number(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class SavedQuery:
    """What a saved search runs: one query combining its examples (see
    :mod:`vitdex.search.examples`), under a filter, in a space, with a cut-off."""

    #: Positive examples (catalog ids): at least one.
    image_ids: tuple[int, ...]
    #: Negative examples (catalog ids).
    negative_ids: tuple[int, ...] = ()
    negative_weight: float = 0.5
    #: Only hits scoring at least this; None: no cut-off.
    min_score: float | None = None
    #: Page size; None (with a min_score): every hit above the cut-off.
    k: int | None = 10
    #: The space searched; None: the default one on each run.
    space: str | None = None
    filter: SearchFilter = field(default_factory=SearchFilter)

    def __post_init__(self) -> None:
        if not self.image_ids:
            raise ConfigError("a saved search needs at least one positive example (an image id)")
        if set(self.image_ids) & set(self.negative_ids):
            both = sorted(set(self.image_ids) & set(self.negative_ids))
            raise ConfigError(f"image {both[0]} cannot be both a positive and a negative example")
        if self.k is None and self.min_score is None:
            raise ConfigError("a saved search needs k, a min_score, or both")
        if self.k is not None and not 1 <= self.k <= 10_000:
            raise ConfigError("k must be between 1 and 10000")

    def to_json(self) -> dict[str, Any]:
        """The JSON stored in the ``query`` column."""
        return {
            "image_ids": list(self.image_ids),
            "negative_ids": list(self.negative_ids),
            "negative_weight": self.negative_weight,
            "min_score": self.min_score,
            "k": self.k,
            "space": self.space,
            "filter": filter_to_json(self.filter),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SavedQuery:
        """The query of :meth:`to_json`'s form; :class:`ConfigError` when it is not one."""
        if not isinstance(data, Mapping):
            raise ConfigError("a saved query must be a JSON object")
        k = data.get("k", 10)
        if k is not None and (isinstance(k, bool) or not isinstance(k, int)):
            raise ConfigError(f"k must be an integer, got {k!r}")
        space = data.get("space")
        if space is not None and not isinstance(space, str):
            raise ConfigError(f"space must be a space name, got {space!r}")
        weight = _number(data.get("negative_weight", 0.5), "negative_weight")
        flt = data.get("filter")
        if flt is not None and not isinstance(flt, Mapping):
            raise ConfigError("filter must be a JSON object")
        return cls(
            image_ids=_ids(data.get("image_ids"), "image_ids"),
            negative_ids=_ids(data.get("negative_ids"), "negative_ids"),
            negative_weight=0.5 if weight is None else weight,
            min_score=_number(data.get("min_score"), "min_score"),
            k=k,
            space=space or None,
            filter=filter_from_json(flt),
        )


def check_name(name: str) -> str:
    """``name`` stripped, if it can name a saved search; else :class:`ConfigError`."""
    name = name.strip()
    if not name:
        raise ConfigError("a saved search needs a name")
    if len(name) > MAX_NAME:
        raise ConfigError(f"a saved search name has at most {MAX_NAME} characters")
    if any(not ch.isprintable() for ch in name):
        raise ConfigError("a saved search name cannot hold control characters")
    if is_id(name):
        # Commands take NAME_OR_ID; an all-digit name would be read as an id.
        raise ConfigError(f"a saved search name cannot be a number ({name!r}); add a letter")
    return name


def save_search(
    session: Session, name: str, query: SavedQuery, *, replace: bool = False
) -> tuple[SavedSearch, bool]:
    """Save ``query`` under ``name``; returns the row and whether it is new.

    A name already taken is a :class:`ConflictError` unless ``replace``, which overwrites
    that search's query (keeping its id).
    """
    name = check_name(name)
    row = session.scalar(select(SavedSearch).where(SavedSearch.name == name))
    if row is not None and not replace:
        raise ConflictError(
            f"a saved search named {name!r} already exists; pick another name or replace it"
        )
    created = row is None
    if row is None:
        row = SavedSearch(name=name, query=query.to_json())
        session.add(row)
    else:
        row.query = query.to_json()
    session.flush()
    return row, created


def list_saved(session: Session) -> list[SavedSearch]:
    """Every saved search, by name."""
    return list(session.scalars(select(SavedSearch).order_by(SavedSearch.name)))


def find_saved(session: Session, name_or_id: str | int) -> SavedSearch:
    """A saved search by id (an int, or a string of digits) or name, or
    :class:`NotFoundError`. Names are never all digits, so the two cannot clash."""
    if isinstance(name_or_id, int):
        return get_row(session, SavedSearch, name_or_id, "saved search")
    text = name_or_id.strip()
    if is_id(text):
        return get_row(session, SavedSearch, int(text), "saved search")
    found = session.scalar(select(SavedSearch).where(SavedSearch.name == text))
    if found is None:
        raise NotFoundError(f"no saved search named {text!r} (see `vitdex searches list`)")
    return found


def delete_saved(session: Session, name_or_id: str | int) -> SavedSearch:
    """Delete a saved search; returns the row as it was."""
    row = find_saved(session, name_or_id)
    session.execute(delete(SavedSearch).where(SavedSearch.id == row.id))
    return row


def saved_to_dict(row: SavedSearch) -> dict[str, Any]:
    """JSON-ready dict of a saved search: id, name, query, created_at, updated_at."""
    return {
        "id": row.id,
        "name": row.name,
        "query": dict(row.query),
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }
