"""The values a metadata filter can name, as the catalog holds them.

Two jobs: find which stored spellings a camera make or model typed in any case stands for
(a payload backend matches exact values), and, when a filter value matches no photo, say
which stored values look like it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from vitdex.db.models import Image, ImageLabel
from vitdex.filters import FilterMiss, SearchFilter, close_values

__all__ = ["filter_misses", "with_spellings"]

#: How many of the most common values a miss lists when none is close.
COMMON_SHOWN = 8


def _column(field: str) -> InstrumentedAttribute[Any]:
    return {
        "camera_make": Image.camera_make,
        "camera_model": Image.camera_model,
        "label": ImageLabel.label,
    }[field]


def spellings(session: Session, field: str, value: str) -> tuple[str, ...]:
    """The stored spellings of a camera make or model that ``value`` matches ignoring
    case, by the same ``lower()`` comparison the SQL filter uses."""
    column = _column(field)
    stmt = select(column).where(func.lower(column) == func.lower(value)).distinct()
    return tuple(sorted(v for v in session.scalars(stmt) if v is not None))


def with_spellings(session: Session, flt: SearchFilter) -> SearchFilter:
    """``flt`` with the stored spellings of its camera make and model filled in."""
    make = model = None
    if flt.camera_make is not None:
        make = spellings(session, "camera_make", flt.camera_make)
    if flt.camera_model is not None:
        model = spellings(session, "camera_model", flt.camera_model)
    return replace(flt, camera_make_spellings=make, camera_model_spellings=model)


def _has(session: Session, field: str, value: str) -> bool:
    column = _column(field)
    if field == "label":
        cond = column == value
    else:
        cond = func.lower(column) == func.lower(value)
    return session.scalar(select(column).where(cond).limit(1)) is not None


def _counted(session: Session, field: str) -> list[str]:
    """Every stored value of the field, most common first."""
    column = _column(field)
    n = func.count()
    stmt = select(column, n).where(column.is_not(None)).group_by(column).order_by(n.desc(), column)
    return [value for value, _ in session.execute(stmt)]


def filter_misses(session: Session, flt: SearchFilter) -> list[FilterMiss]:
    """Each camera make, camera model or label of ``flt`` that no catalog photo has, with
    the stored values close to it (or, with none close, the most common ones)."""
    misses = []
    for field in ("camera_make", "camera_model", "label"):
        value = getattr(flt, field)
        if value is None or _has(session, field, value):
            continue
        stored = _counted(session, field)
        close = close_values(value, stored)
        common = () if close else tuple(stored[:COMMON_SHOWN])
        misses.append(FilterMiss(field, value, close, common))
    return misses
