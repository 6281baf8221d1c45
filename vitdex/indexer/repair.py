"""Comparing and repairing one space's store against the catalog.

The catalog is the source of truth: a vector without an image row is a stray, an image
row whose vector is gone is sent back to ``pending``. Comparing is always safe; repairing
is only safe with no writer running (a writer's batch is in the store before its SQL
commit), so :func:`reconcile_space` insists on the writing lease held exclusively
(:mod:`vitdex.search.lease`).
"""

from __future__ import annotations

import logging

import numpy as np
from sqlalchemy.orm import Session

from vitdex.db import repo
from vitdex.db.models import Space
from vitdex.search.lease import WriteLease
from vitdex.search.store import VectorStore, compare, reconcile

__all__ = ["compare_space", "reconcile_space"]

log = logging.getLogger(__name__)


def compare_space(session: Session, space: Space, store: VectorStore) -> tuple[int, int]:
    """How far the store and the catalog disagree for one space: (strays, missing).

    Changes nothing, so read paths may call it at any time; while a writer runs, the
    numbers may include its batch in flight.
    """
    catalog_ids = np.asarray(repo.vector_image_ids(session, space.id), dtype=np.int64)
    strays, missing = compare(store, catalog_ids)
    return len(strays), len(missing)


def reconcile_space(
    session: Session, space: Space, store: VectorStore, lease: WriteLease
) -> tuple[int, int]:
    """Make the store and the catalog agree for one space; returns (strays, missing).

    Stray vectors (the store has them, the catalog does not) are deleted; images whose
    vectors are missing go back to ``pending`` so the next run re-embeds them. ``lease``
    must be held exclusively: with a writer running, its batch in flight would be
    deleted as strays.
    """
    if not lease.exclusive:
        raise RuntimeError("reconcile_space needs the writing lease held exclusively")
    catalog_ids = np.asarray(repo.vector_image_ids(session, space.id), dtype=np.int64)
    strays, missing = reconcile(store, catalog_ids)
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
    return len(strays), len(missing)
