"""The metadata filter as a JSON body takes it (clustering, duplicate scans, tagging).

A misspelt field must be an error, not ignored: ``{"filter": {"tags": ["rex"]}}``
silently read as "no filter" would cluster, scan or tag the whole library. So the body is
a msgspec ``Struct`` that forbids unknown fields (a dataclass body drops them quietly).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from vitdex.db.models import INT64_MAX
from vitdex.errors import ConfigError
from vitdex.filters import split_head_label

__all__ = ["FilterIn", "check_head_labels", "filter_params"]


class FilterIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The same filters as similar search; every given condition must hold."""

    #: Library ids (any of them).
    library_id: list[int] = msgspec.field(default_factory=list)
    #: Only photos under this folder.
    folder: str | None = None
    #: Taken at or after (ISO date or date-time).
    taken_after: str | None = None
    #: Taken before (exclusive).
    taken_before: str | None = None
    #: Camera maker (any case).
    camera_make: str | None = None
    #: Camera model (any case).
    camera_model: str | None = None
    #: A predicted label (exact).
    label: str | None = None
    #: Tags every photo must carry.
    tag: list[str] = msgspec.field(default_factory=list)
    #: Leave out photos marked as duplicates.
    hide_duplicates: bool = False
    #: Labels a head put on the photo, each ``HEAD:LABEL`` (every one must hold).
    head_label: list[str] = msgspec.field(default_factory=list)


def filter_params(flt: FilterIn | None) -> dict[str, Any] | None:
    """``flt`` as a job's or service's ``params["filter"]`` (see
    :func:`vitdex.search.cluster.filter_from_params`), checked: bad dates and ids are a
    :class:`ConfigError` naming the field."""
    if flt is None:
        return None
    out: dict[str, Any] = {}
    for name in ("taken_after", "taken_before"):
        value = getattr(flt, name)
        if value is not None:
            try:
                out[name] = datetime.fromisoformat(value).isoformat()
            except ValueError:
                raise ConfigError(
                    f"filter.{name} must be an ISO date or datetime, got {value!r}"
                ) from None
    if flt.library_id:
        if any(not 1 <= i <= INT64_MAX for i in flt.library_id):
            raise ConfigError(f"filter.library_id must be between 1 and {INT64_MAX}")
        out["library_ids"] = list(flt.library_id)
    if flt.folder:
        out["path_prefix"] = flt.folder.rstrip("/") or "/"
    for name in ("camera_make", "camera_model", "label"):
        value = getattr(flt, name)
        if value is not None:
            if "\x00" in value:
                raise ConfigError(f"filter.{name} must not contain NUL characters")
            out[name] = value
    if flt.tag:
        if any(not t.strip() or "\x00" in t for t in flt.tag):
            raise ConfigError("filter.tag must not be empty or contain NUL characters")
        out["tags"] = list(flt.tag)
    if flt.hide_duplicates:
        out["hide_duplicates"] = True
    if flt.head_label:
        out["head_labels"] = check_head_labels(flt.head_label, "filter.head_label")
    return out


def check_head_labels(values: list[str], field: str) -> list[str]:
    """``values`` checked as ``HEAD:LABEL`` each (a :class:`ConfigError` naming ``field``
    otherwise): a value without the colon would match nothing, silently."""
    for value in values:
        if "\x00" in value:
            raise ConfigError(f"{field} must not contain NUL characters")
        try:
            split_head_label(value)
        except ValueError as exc:
            raise ConfigError(f"{field}: {exc}") from None
    return list(values)
