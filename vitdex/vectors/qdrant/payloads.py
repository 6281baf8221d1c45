"""What Qdrant keeps beside each vector, how writes keep it, and filters over it.

The payload of a point is :func:`vitdex.filters.image_payload`, written with the vector.
A write without payloads replaces only the vectors of existing points, so their payloads
stay (:func:`replace_vectors`). A search filter becomes conditions on the payload fields,
which the server applies inside its search (over the payload indexes listed here), so a
narrow filter still yields up to ``k`` hits. Both sides read times the same way, so one
module keeps them in step.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from qdrant_client import models

from vitdex.errors import StoreError
from vitdex.filters import SearchFilter
from vitdex.vectors.qdrant.connection import Connection, missing_point

__all__ = [
    "PAYLOAD_INDEXES",
    "existing_ids",
    "plain_payloads",
    "replace_vectors",
    "search_filter_to_qdrant",
    "upsert_points",
]

log = logging.getLogger(__name__)

#: The payload fields filters use, and the index type each gets on a server.
PAYLOAD_INDEXES: dict[str, models.PayloadSchemaType] = {
    "library_id": models.PayloadSchemaType.INTEGER,
    "dirs": models.PayloadSchemaType.KEYWORD,
    "taken_at": models.PayloadSchemaType.FLOAT,
    "camera_make": models.PayloadSchemaType.KEYWORD,
    "camera_model": models.PayloadSchemaType.KEYWORD,
    "labels": models.PayloadSchemaType.KEYWORD,
}


def plain_payloads(
    payloads: Sequence[Mapping[str, Any]] | None, keep: npt.NDArray[np.intp] | None
) -> list[dict[str, Any]] | None:
    """``payloads`` as plain dicts, the client's wire form, only the rows ``keep`` keeps
    (None: all); None stays None (replaced vectors then keep their payloads)."""
    if payloads is None:
        return None
    rows = payloads if keep is None else [payloads[i] for i in keep.tolist()]
    return [dict(p) for p in rows]


def upsert_points(
    connection: Connection,
    ids: npt.NDArray[np.int64],
    vecs: npt.NDArray[np.float32],
    payloads: list[dict[str, Any]] | None,
) -> None:
    """Write whole points: each replaces any point of its id, payload included."""
    client = connection.client()
    connection.call(
        "upsert",
        client.upsert,
        collection_name=connection.collection,
        # float32 -> Python float is exact, so the stored float32 is bit-identical.
        points=models.Batch(ids=ids.tolist(), vectors=vecs.tolist(), payloads=payloads),
        wait=True,
    )


def replace_vectors(
    connection: Connection, ids: npt.NDArray[np.int64], vecs: npt.NDArray[np.float32]
) -> None:
    """Upsert without payloads, keeping the payload of points that already exist.

    A plain upsert replaces the whole point, payload included. ``update_vectors``
    keeps the payload but fails on points that do not exist, so existing ids (one
    cheap id-only lookup) go through it and new ones through a plain upsert. A point
    deleted between lookup and update makes the update fail; then look again.
    """
    client = connection.client()
    for _ in range(3):
        present = existing_ids(connection, ids)
        is_new = np.fromiter((i not in present for i in ids.tolist()), dtype=bool)
        if is_new.any():
            upsert_points(connection, ids[is_new], vecs[is_new], None)
        old = ~is_new
        if not old.any():
            return
        try:
            connection.call(
                "update vectors",
                client.update_vectors,
                passthrough=missing_point,
                collection_name=connection.collection,
                points=[
                    models.PointVectors(id=i, vector=v)
                    for i, v in zip(ids[old].tolist(), vecs[old].tolist(), strict=True)
                ],
                wait=True,
            )
            return
        except Exception as exc:
            if not missing_point(exc):
                raise
            log.info("points vanished while their vectors were replaced; looking again")
    raise StoreError(
        f"Qdrant collection {connection.collection!r}: points kept disappearing while their "
        "vectors were being replaced (another writer is deleting them)"
    )


def existing_ids(connection: Connection, ids: npt.NDArray[np.int64]) -> set[int]:
    """Which of ``ids`` are stored (ids only: no payload, no vectors)."""
    if ids.size == 0:
        return set()
    client = connection.client()
    records = connection.call(
        "retrieve",
        client.retrieve,
        collection_name=connection.collection,
        ids=[int(i) for i in ids.tolist()],
        with_payload=False,
        with_vectors=False,
    )
    return {int(r.id) for r in records}


def search_filter_to_qdrant(
    flt: SearchFilter | None, allowed_ids: npt.NDArray[np.int64] | None = None
) -> models.Filter | None:
    """The Qdrant filter for ``flt`` (and an id restriction), over :func:`image_payload`.

    ``taken_after`` is inclusive and ``taken_before`` exclusive (a half-open range), both
    read as wall-clock times in UTC, exactly as the payload stores ``taken_at``.
    """
    must: list[models.Condition] = []
    if allowed_ids is not None:
        must.append(models.HasIdCondition(has_id=[int(i) for i in allowed_ids.tolist()]))
    if flt is not None:
        if flt.library_ids:
            must.append(
                models.FieldCondition(
                    key="library_id",
                    match=models.MatchAny(any=[int(i) for i in flt.library_ids]),
                )
            )
        if flt.path_prefix is not None:
            folder = _folder_key(flt.path_prefix)
            must.append(models.FieldCondition(key="dirs", match=models.MatchValue(value=folder)))
        if flt.taken_after is not None or flt.taken_before is not None:
            must.append(
                models.FieldCondition(
                    key="taken_at",
                    range=models.Range(
                        gte=_epoch(flt.taken_after) if flt.taken_after else None,
                        lt=_epoch(flt.taken_before) if flt.taken_before else None,
                    ),
                )
            )
        # Payload values match exactly: a camera make or model matches the stored
        # spellings the catalog found for it (ignoring case), else the value as given.
        for key, value, spelt in (
            ("camera_make", flt.camera_make, flt.camera_make_spellings),
            ("camera_model", flt.camera_model, flt.camera_model_spellings),
            ("labels", flt.label, None),
        ):
            if value is None:
                continue
            values = list(spelt) if spelt is not None else [value]
            match: models.MatchValue | models.MatchAny = (
                models.MatchValue(value=values[0])
                if len(values) == 1
                else models.MatchAny(any=values)
            )
            must.append(models.FieldCondition(key=key, match=match))
    return models.Filter(must=must) if must else None


def _folder_key(prefix: str) -> str:
    """A folder as ``image_payload`` lists it in ``dirs``: no trailing slash, root is "/"."""
    stripped = prefix.rstrip("/")
    if not stripped:
        return "/" if prefix.startswith("/") else ""
    return stripped


def _epoch(when: datetime) -> float:
    # Same convention as image_payload: the wall-clock time read as UTC (EXIF has no zone).
    return when.replace(tzinfo=UTC).timestamp()
