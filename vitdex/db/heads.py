"""SQL for heads and the labels they put on photos.

Predicted labels are written in bulk with one ``INSERT ... ON CONFLICT DO UPDATE ...
WHERE source <> 'corrected'`` per chunk, so applying a head to a million photos never
reads their rows and never overwrites what a person set. Functions take a
:class:`~sqlalchemy.orm.Session` and leave committing to the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    String,
    Table,
    bindparam,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from vitdex.db.head_models import Head, HeadLabel, LabelSource
from vitdex.db.models import Image, ImageVector, utcnow
from vitdex.db.review_models import ImageTag
from vitdex.errors import ConflictError, NotFoundError

__all__ = [
    "LABEL_ORDERS",
    "LabelRow",
    "clear_correction",
    "corrected_examples",
    "correction_count",
    "delete_head_row",
    "drop_stale_predictions",
    "find_head",
    "get_head_row",
    "heads_of_space",
    "label_counts",
    "label_of",
    "label_page",
    "list_head_rows",
    "save_head",
    "set_correction",
    "tagged_vector_ids",
    "upsert_predictions",
    "vector_ids_under",
]

#: Rows per statement (PostgreSQL) or executemany (SQLite) of predictions.
UPSERT_CHUNK = 10_000
#: The Core table: bulk statements on it skip the ORM's per-row bookkeeping.
_TABLE: Table = HeadLabel.__table__  # type: ignore[assignment]
#: The orders a page of labels can take.
LABEL_ORDERS = ("uncertain", "confident", "recent")


@dataclass(frozen=True)
class LabelRow:
    """One photo's label under a head, with the photo's path."""

    image_id: int
    path: str
    label: str
    confidence: float
    margin: float
    source: str
    updated_at: Any


def find_head(session: Session, name: str) -> Head | None:
    """The head named ``name``, if there is one."""
    return session.scalar(select(Head).where(Head.name == name))


def get_head_row(session: Session, name: str) -> Head:
    """The head named ``name``, or :class:`NotFoundError` naming the heads there are."""
    found = find_head(session, name)
    if found is None:
        names = list(session.scalars(select(Head.name).order_by(Head.name)))
        known = ", ".join(names) if names else "none; train one with `vitdex heads train`"
        raise NotFoundError(f"no head named {name!r} (heads: {known})")
    return found


def list_head_rows(session: Session) -> list[Head]:
    """Every head, by name."""
    return list(session.scalars(select(Head).order_by(Head.name)))


def heads_of_space(session: Session, space_id: int) -> list[Head]:
    """The heads trained on one space (what labels new photos of that space)."""
    return list(session.scalars(select(Head).where(Head.space_id == space_id).order_by(Head.id)))


def save_head(session: Session, values: dict[str, Any], *, replace: bool) -> Head:
    """Store a trained head under ``values["name"]``.

    A head of that name is a :class:`ConflictError` unless ``replace``; replaced, it keeps
    its id and its corrections whose label the new head still has (a person's word stays),
    while its predictions go: they came from the old weights.
    """
    head = find_head(session, values["name"])
    if head is None:
        head = Head(**values)
        session.add(head)
        session.flush()
        return head
    if not replace:
        raise ConflictError(f"a head named {head.name!r} exists; replace it or pick another name")
    for key, value in values.items():
        setattr(head, key, value)
    head.trained_at = utcnow()
    head.applied_at = None
    kept = [c.lower() for c in values["classes"]]
    session.execute(
        delete(HeadLabel).where(
            HeadLabel.head_id == head.id,
            (HeadLabel.source != LabelSource.CORRECTED.value)
            | func.lower(HeadLabel.label).not_in(kept),
        )
    )
    session.flush()
    return head


def delete_head_row(session: Session, name: str) -> None:
    """Delete a head and its labels; :class:`NotFoundError` when there is none."""
    head = get_head_row(session, name)
    session.execute(delete(HeadLabel).where(HeadLabel.head_id == head.id))
    session.delete(head)
    session.flush()


def label_counts(session: Session, head_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """Photos per label for each head (an index-only read of the label index)."""
    out: dict[int, dict[str, int]] = {i: {} for i in head_ids}
    if not head_ids:
        return out
    stmt = (
        select(HeadLabel.head_id, HeadLabel.label, func.count())
        .where(HeadLabel.head_id.in_(list(head_ids)))
        .group_by(HeadLabel.head_id, HeadLabel.label)
        .order_by(HeadLabel.head_id, HeadLabel.label)
    )
    for head_id, label, n in session.execute(stmt):
        out[int(head_id)][str(label)] = int(n)
    return out


def _keep_corrections(stmt: Any) -> Any:
    """``ON CONFLICT (head_id, image_id) DO UPDATE`` the prediction, unless the row there
    is a correction (a person's word is never overwritten)."""
    new = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[HeadLabel.head_id, HeadLabel.image_id],
        set_={
            "label": new.label,
            "confidence": new.confidence,
            "margin": new.margin,
            "source": new.source,
            "updated_at": new.updated_at,
        },
        where=HeadLabel.source != LabelSource.CORRECTED.value,
    )


def _postgres_upsert() -> Any:
    """One ``INSERT ... SELECT FROM unnest(arrays)`` per chunk: four array parameters
    instead of one parameter set per row (several times faster than executemany)."""
    rows = (
        func.unnest(
            bindparam("ids", type_=postgresql.ARRAY(BigInteger)),
            bindparam("labels", type_=postgresql.ARRAY(String)),
            bindparam("confidences", type_=postgresql.ARRAY(Float)),
            bindparam("margins", type_=postgresql.ARRAY(Float)),
        )
        .table_valued("image_id", "label", "confidence", "margin")
        .render_derived()
    )
    source = select(
        bindparam("head_id", type_=BigInteger),
        rows.c.image_id,
        rows.c.label,
        rows.c.confidence,
        rows.c.margin,
        bindparam("source", type_=String),
        bindparam("now", type_=_TABLE.c.updated_at.type),
    )
    names = ("head_id", "image_id", "label", "confidence", "margin", "source", "updated_at")
    columns = [_TABLE.c[n] for n in names]
    return _keep_corrections(postgresql.insert(_TABLE).from_select(columns, source))


def upsert_predictions(
    session: Session,
    head_id: int,
    image_ids: Sequence[int],
    labels: Sequence[str],
    confidences: Sequence[float],
    margins: Sequence[float],
) -> int:
    """Write predicted labels for ``image_ids`` (corrections stay as they are); returns
    how many rows were sent, in chunks of :data:`UPSERT_CHUNK`: on PostgreSQL one
    statement over arrays each, on SQLite one executemany each (sqlite3 loops in C)."""
    now = utcnow()
    predicted = LabelSource.PREDICTED.value
    postgres = session.get_bind().dialect.name == "postgresql"
    stmt = _postgres_upsert() if postgres else _keep_corrections(sqlite.insert(_TABLE))
    for start in range(0, len(image_ids), UPSERT_CHUNK):
        end = start + UPSERT_CHUNK
        if postgres:
            session.execute(
                stmt,
                {
                    "head_id": head_id,
                    "ids": [int(i) for i in image_ids[start:end]],
                    "labels": list(labels[start:end]),
                    "confidences": [float(c) for c in confidences[start:end]],
                    "margins": [float(m) for m in margins[start:end]],
                    "source": predicted,
                    "now": now,
                },
            )
            continue
        rows = [
            {
                "head_id": head_id,
                "image_id": int(i),
                "label": lab,
                "confidence": float(c),
                "margin": float(m),
                "source": predicted,
                "updated_at": now,
            }
            for i, lab, c, m in zip(
                image_ids[start:end],
                labels[start:end],
                confidences[start:end],
                margins[start:end],
                strict=True,
            )
        ]
        session.execute(stmt, rows)
    return len(image_ids)


def set_correction(session: Session, head_id: int, image_id: int, label: str) -> None:
    """A person's label for one photo: confidence and margin 1, never overwritten."""
    session.execute(
        delete(HeadLabel).where(HeadLabel.head_id == head_id, HeadLabel.image_id == image_id)
    )
    session.execute(
        insert(HeadLabel).values(
            head_id=head_id,
            image_id=image_id,
            label=label,
            confidence=1.0,
            margin=1.0,
            source=LabelSource.CORRECTED.value,
            updated_at=utcnow(),
        )
    )


def clear_correction(session: Session, head_id: int, image_id: int) -> bool:
    """Remove a photo's correction (the next apply predicts it); whether there was one."""
    result: Any = session.execute(
        delete(HeadLabel).where(
            HeadLabel.head_id == head_id,
            HeadLabel.image_id == image_id,
            HeadLabel.source == LabelSource.CORRECTED.value,
        )
    )
    return bool(result.rowcount)


def corrected_examples(session: Session, head_id: int) -> list[tuple[int, str]]:
    """``(image_id, label)`` of every correction under a head, by image id: examples for
    the next training of a head of that name."""
    stmt = (
        select(HeadLabel.image_id, HeadLabel.label)
        .where(HeadLabel.head_id == head_id, HeadLabel.source == LabelSource.CORRECTED.value)
        .order_by(HeadLabel.image_id)
    )
    return [(int(i), str(lab)) for i, lab in session.execute(stmt)]


def _label_select(head_id: int) -> Any:
    stmt: Any = (
        select(
            HeadLabel.image_id,
            Image.path,
            HeadLabel.label,
            HeadLabel.confidence,
            HeadLabel.margin,
            HeadLabel.source,
            HeadLabel.updated_at,
        )
        .join(Image, Image.id == HeadLabel.image_id)
        .where(HeadLabel.head_id == head_id)
    )
    return stmt


def label_of(session: Session, head_id: int, image_id: int) -> LabelRow | None:
    """One photo's label under a head, if it has one."""
    row = session.execute(_label_select(head_id).where(HeadLabel.image_id == image_id)).first()
    return None if row is None else LabelRow(*row)


def label_page(
    session: Session,
    head_id: int,
    *,
    label: str | None = None,
    source: str | None = None,
    order: str = "uncertain",
    limit: int = 50,
    offset: int = 0,
) -> tuple[int, list[LabelRow]]:
    """The number of labels that match and one page of them.

    ``label`` compares ignoring case. ``order``: ``uncertain`` (smallest margin first,
    what a reviewer should look at), ``confident`` (largest first) or ``recent``.
    """
    conds = [HeadLabel.head_id == head_id]
    if label is not None:
        conds.append(func.lower(HeadLabel.label) == label.lower())
    if source is not None:
        conds.append(HeadLabel.source == source)
    total = int(session.scalar(select(func.count()).select_from(HeadLabel).where(*conds)) or 0)
    by: Any = {
        "uncertain": (HeadLabel.margin.asc(), HeadLabel.image_id.asc()),
        "confident": (HeadLabel.margin.desc(), HeadLabel.image_id.asc()),
        "recent": (HeadLabel.updated_at.desc(), HeadLabel.image_id.desc()),
    }[order]
    stmt = _label_select(head_id).where(*conds[1:]).order_by(*by).limit(limit).offset(offset)
    return total, [LabelRow(*row) for row in session.execute(stmt)]


# --------------------------------------------------------------------------- examples


def tagged_vector_ids(session: Session, tag_id: int, space_id: int) -> list[int]:
    """Ids of the photos carrying the tag that have a vector in the space, sorted."""
    stmt = (
        select(ImageTag.image_id)
        .join(
            ImageVector,
            (ImageVector.image_id == ImageTag.image_id) & (ImageVector.space_id == space_id),
        )
        .where(ImageTag.tag_id == tag_id)
        .order_by(ImageTag.image_id)
    )
    return [int(i) for i in session.scalars(stmt)]


def vector_ids_under(session: Session, folder: str, space_id: int) -> list[int]:
    """Ids of the photos below ``folder`` (at any depth) with a vector in the space."""
    prefix = folder.rstrip("/") + "/"
    stmt = (
        select(Image.id)
        .join(ImageVector, ImageVector.image_id == Image.id)
        .where(ImageVector.space_id == space_id, Image.path.startswith(prefix, autoescape=True))
        .order_by(Image.id)
    )
    return [int(i) for i in session.scalars(stmt)]


def correction_count(session: Session, head_id: int) -> int:
    """How many photos a person labelled under the head."""
    stmt = select(func.count()).where(
        HeadLabel.head_id == head_id, HeadLabel.source == LabelSource.CORRECTED.value
    )
    return int(session.scalar(stmt) or 0)


def drop_stale_predictions(session: Session, head_id: int, space_id: int) -> int:
    """Delete predictions for photos that lost their vector in the space (gone missing or
    failed since); corrections stay. Returns how many went."""
    has_vector = (
        select(ImageVector.image_id)
        .where(ImageVector.image_id == HeadLabel.image_id, ImageVector.space_id == space_id)
        .exists()
    )
    result: Any = session.execute(
        delete(HeadLabel).where(
            HeadLabel.head_id == head_id,
            HeadLabel.source != LabelSource.CORRECTED.value,
            ~has_vector,
        )
    )
    return int(result.rowcount or 0)
