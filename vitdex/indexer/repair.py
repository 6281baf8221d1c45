"""Comparing and repairing one space's store against the catalog.

The catalog is the source of truth: a vector without an image row is a stray, an image
row whose vector is gone is sent back to ``pending``. Comparing is always safe; repairing
is only safe with no writer running (a writer's batch is in the store before its SQL
commit), so :func:`repair_space` insists on the writing lease held exclusively
(:mod:`vitdex.vectors.lease`).
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
from sqlalchemy.orm import Session

from vitdex.db import repo
from vitdex.db.models import Space
from vitdex.vectors.lease import WriteLease
from vitdex.vectors.store import VectorStore, compare

__all__ = ["compare_space", "reconcile_space", "repair_space"]

log = logging.getLogger(__name__)


def compare_space(session: Session, space: Space, store: VectorStore) -> tuple[int, int]:
    """How far the store and the catalog disagree for one space: (strays, missing).

    Changes nothing, so read paths may call it at any time; while a writer runs, the
    numbers may include its batch in flight.
    """
    catalog_ids = np.asarray(repo.vector_image_ids(session, space.id), dtype=np.int64)
    strays, missing = compare(store, catalog_ids)
    return len(strays), len(missing)


def repair_space(
    session: Session,
    space: Space,
    store: VectorStore,
    strays: npt.NDArray[np.int64],
    missing: npt.NDArray[np.int64],
    lease: WriteLease,
) -> None:
    """Repair what :func:`vitdex.vectors.store.compare` found for one space: the strays go
    from the store, images whose vectors are missing go back to ``pending`` (the next
    run re-embeds them). Flushes; the caller commits. ``lease`` must be held exclusively:
    with a writer running, its batch in flight would be deleted as strays.
    """
    if not lease.exclusive:
        raise RuntimeError("repairing a space needs the writing lease held exclusively")
    if len(strays):
        store.delete(strays)
    if len(missing):
        ids = [int(i) for i in missing]
        repo.remove_vector_rows(session, ids, space.id)
        repo.set_pending(session, ids)
    if len(strays) or len(missing):
        log.warning(
            "space %s: removed %d stray vectors, %d images lost theirs and will be re-embedded",
            space.name,
            len(strays),
            len(missing),
        )


def reconcile_space(
    session: Session, space: Space, store: VectorStore, lease: WriteLease
) -> tuple[int, int]:
    """Make the store and the catalog agree for one space (:func:`repair_space` on what
    they disagree on); returns (strays, missing)."""
    catalog_ids = np.asarray(repo.vector_image_ids(session, space.id), dtype=np.int64)
    strays, missing = compare(store, catalog_ids)
    repair_space(session, space, store, strays, missing, lease)
    return len(strays), len(missing)
