"""Copy every vector of one store into another (FAISS → Qdrant, Qdrant → FAISS, ...)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from vitdex.errors import SpaceMismatchError
from vitdex.vectors.store import VectorNotFoundError, VectorStore

__all__ = ["migrate_store"]

log = logging.getLogger(__name__)


def migrate_store(
    source: VectorStore,
    target: VectorStore,
    *,
    batch_size: int = 1024,
    payloads: Callable[[npt.NDArray[np.int64]], list[dict[str, Any]]] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Make ``target`` hold exactly the vectors of ``source``; returns how many it wrote.

    Idempotent and resumable: ids the target holds but the source does not are deleted,
    ids whose vector the target already holds bit for bit are skipped, and the rest are
    copied ``batch_size`` at a time. Re-running after an interruption (or after the source
    changed) therefore finishes the job without redoing it. ``payloads(ids)`` gives the
    payloads written with each copied batch (the catalog metadata a Qdrant target filters
    on); without it, replaced vectors keep the payload the target had. ``progress(done,
    total)`` is called after each batch, counting skipped ids as done.

    Raises :class:`SpaceMismatchError` when the stores differ in dim or metric.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    _check_compatible(source, target)
    source_ids = np.unique(np.asarray(source.ids(), dtype=np.int64))
    target_ids = np.unique(np.asarray(target.ids(), dtype=np.int64))
    strays = np.setdiff1d(target_ids, source_ids, assume_unique=True)
    if strays.size:
        # First, so that the target never answers with an id the source lacks.
        target.delete(strays)
        log.info("migrate: deleted %d vectors the source does not hold", strays.size)
    total = int(source_ids.size)
    copied = 0
    for start in range(0, total, batch_size):
        batch = source_ids[start : start + batch_size]
        batch, vectors = _read(source, batch)
        todo = _differing(target, target_ids, batch, vectors)
        if todo.any():
            ids, vecs = batch[todo], vectors[todo]
            rows: list[dict[str, Any]] | None = None
            if payloads is not None:
                rows = payloads(ids)
                if len(rows) != ids.size:
                    raise ValueError(f"payloads() gave {len(rows)} payloads for {ids.size} ids")
            target.upsert(ids, vecs, rows)
            copied += int(ids.size)
        if progress is not None:
            progress(min(start + batch_size, total), total)
    return copied


def _check_compatible(source: VectorStore, target: VectorStore) -> None:
    if source.dim != target.dim:
        raise SpaceMismatchError(
            f"cannot migrate space {source.space!r} of dim {source.dim} into a store of "
            f"dim {target.dim}"
        )
    if source.metric != target.metric:
        raise SpaceMismatchError(
            f"cannot migrate space {source.space!r}: metric {source.metric!r} in the source, "
            f"{target.metric!r} in the target"
        )


def _read(
    source: VectorStore, ids: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The source's vectors of ``ids``, leaving out ids deleted since they were listed."""
    while True:
        try:
            return ids, np.asarray(source.get(ids), dtype=np.float32)
        except VectorNotFoundError as exc:
            ids = np.setdiff1d(ids, np.asarray(exc.ids, dtype=np.int64))


def _differing(
    target: VectorStore,
    target_ids: npt.NDArray[np.int64],
    ids: npt.NDArray[np.int64],
    vectors: npt.NDArray[np.float32],
) -> npt.NDArray[np.bool_]:
    """Which of ``ids`` the target lacks or holds with a different vector."""
    todo = ~np.isin(ids, target_ids, assume_unique=True)
    held = ids[~todo]
    if held.size == 0:
        return todo
    try:
        have = np.asarray(target.get(held), dtype=np.float32)
    except VectorNotFoundError:
        return np.ones(ids.size, dtype=bool)  # deleted meanwhile: copy the whole batch
    # Compare bit patterns: -0.0 == 0.0 and NaN != NaN must not decide what is copied.
    same = (have.view(np.uint32) == vectors[~todo].view(np.uint32)).all(axis=1)
    todo[np.flatnonzero(~todo)[~same]] = True
    return todo
