"""Helpers every repository module of :mod:`vitdex.db` shares."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from vitdex.db.models import INT64_MAX, Base
from vitdex.errors import NotFoundError

__all__ = ["CHUNK", "chunks", "get_row"]

_Row = TypeVar("_Row", bound=Base)

#: SQLite allows 32766 bound parameters per statement; stay well below with IN lists.
CHUNK = 5000


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    """``items`` in slices of at most ``size``, for statements with an IN list."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def get_row(session: Session, model: type[_Row], row_id: int, what: str) -> _Row:
    """The row of ``model`` with id ``row_id`` (re-read from the database), or
    :class:`NotFoundError` naming ``what``; ids outside int64 name nothing."""
    row = session.get(model, row_id, populate_existing=True) if 1 <= row_id <= INT64_MAX else None
    if row is None:
        raise NotFoundError(f"no {what} with id {row_id}")
    return row
