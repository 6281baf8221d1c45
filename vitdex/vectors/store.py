"""The vector store contract shared by every backend, and helpers built only on it.

A store holds the vectors of exactly one space. Ids are the SQL image ids (int64), never
positions in an index, so the catalog and the store can be compared and repaired id by id.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol, Self, runtime_checkable

import numpy as np
import numpy.typing as npt

from vitdex.errors import NotFoundError, SpaceMismatchError
from vitdex.filters import SearchFilter, image_payload

__all__ = [
    "ClosingStore",
    "SearchFilter",
    "SearchHit",
    "VectorNotFoundError",
    "VectorStore",
    "compare",
    "image_payload",
    "sanitize_space_name",
]


class SearchHit(NamedTuple):
    """One neighbour: the image id and its similarity to the query (higher is closer)."""

    id: int
    #: Inner product; vectors are L2-normalised, so this is the cosine similarity.
    score: float


class VectorNotFoundError(NotFoundError, KeyError):
    """Vectors were asked for ids the store does not hold.

    Both a :class:`NotFoundError` (the API answers 404) and a :class:`KeyError` (so plain
    Python lookups can catch it).
    """

    def __init__(self, space: str, ids: Iterable[int]) -> None:
        self.ids = [int(i) for i in ids]
        shown = ", ".join(str(i) for i in self.ids[:10])
        more = f" and {len(self.ids) - 10} more" if len(self.ids) > 10 else ""
        super().__init__(f"space {space!r} holds no vector for id {shown}{more}")

    def __str__(self) -> str:
        # KeyError would print the repr of the message, quotes and all.
        return self.message


@runtime_checkable
class VectorStore(Protocol):
    """What the indexer and the search service need from a vector backend."""

    #: Name of the space whose vectors the store holds.
    space: str
    #: Length of every vector.
    dim: int
    #: How vectors compare: ``"ip"`` (inner product) or ``"l2"`` (squared distance,
    #: negated in scores so that higher is closer).
    metric: str
    #: Whether the store keeps each image's filter metadata (:func:`image_payload`, given
    #: to ``upsert``) and applies a :class:`SearchFilter` itself. When False the caller
    #: resolves a filter to ``allowed_ids`` in SQL and passes no payloads.
    uses_payloads: bool

    def upsert(
        self,
        ids: npt.NDArray[Any],
        vectors: npt.NDArray[Any],
        payloads: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """Store ``vectors`` (float32 [n, dim]) under ``ids`` (int64 [n]), replacing any
        vector already stored under one of those ids; within one call the last
        duplicate id wins. Durable when the call returns."""
        ...

    def delete(self, ids: npt.NDArray[Any]) -> int:
        """Remove the vectors of ``ids``; returns how many of them existed."""
        ...

    def search(
        self,
        queries: npt.NDArray[Any],
        k: int,
        *,
        allowed_ids: npt.NDArray[Any] | None = None,
    ) -> list[list[SearchHit]]:
        """The ``k`` nearest stored vectors of each query ([q, dim], or one [dim] vector),
        best first, fewer when fewer exist; ``allowed_ids`` keeps only those ids."""
        ...

    def get(self, ids: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """The stored vectors of ``ids`` ([n, dim], in the order asked).

        Raises :class:`VectorNotFoundError` (a ``KeyError``) naming missing ids.
        """
        ...

    def ids(self) -> npt.NDArray[np.int64]:
        """Every stored id, sorted."""
        ...

    def count(self) -> int:
        """How many vectors the store holds."""
        ...

    def flush(self) -> None:
        """Make everything durable in the backend's compact form (a snapshot)."""
        ...

    def close(self) -> None:
        """Release files, connections and memory."""
        ...

    def describe(self) -> dict[str, Any]:
        """Backend, space, dim, metric, index type, count and storage figures."""
        ...


class ClosingStore(abc.ABC):
    """What every backend does around :meth:`close`: ``with store:`` closes it, and a
    store dropped unclosed still lets go of its files or connection."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release files, connections and memory; later calls raise."""

    @abc.abstractmethod
    def _release(self) -> None:
        """Let go of descriptors and clients (also from ``__del__``: no lock taken)."""

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def check_vectors(
    values: npt.ArrayLike, dim: int, space: str, what: str
) -> npt.NDArray[np.float32]:
    """``values`` as a C-contiguous float32 [n, dim] array, or a clear error.

    A single [dim] vector is accepted as one row. A wrong width is a
    :class:`SpaceMismatchError` (vectors of another model); NaN or inf is refused.
    """
    arr = np.asarray(values, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be [n, {dim}], got shape {arr.shape}")
    if arr.shape[1] != dim:
        raise SpaceMismatchError(
            f"{what} have dim {arr.shape[1]} but space {space!r} holds dim {dim}"
        )
    if arr.size and not np.isfinite(arr).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return np.ascontiguousarray(arr)


def check_ids(ids: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """``ids`` as a C-contiguous int64 [n] array (a single id as one row), or a
    ``ValueError``; each backend then refuses the ids it cannot store."""
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"ids must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ids must be integers, got {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def check_batch(
    ids: npt.NDArray[np.int64],
    vectors: npt.ArrayLike,
    payloads: Sequence[Mapping[str, Any]] | None,
    dim: int,
    space: str,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.intp] | None]:
    """An ``upsert`` batch checked: ``ids`` (checked by the backend), ``vectors`` as
    float32 [n, dim], and the rows to keep so that the last of duplicate ids wins (None
    when no id repeats), applied to both. ``payloads`` are only counted."""
    vecs = check_vectors(vectors, dim, space, "vectors")
    if vecs.shape[0] != ids.shape[0]:
        raise ValueError(f"{ids.shape[0]} ids but {vecs.shape[0]} vectors")
    if payloads is not None and len(payloads) != ids.shape[0]:
        raise ValueError(f"{ids.shape[0]} ids but {len(payloads)} payloads")
    if ids.size <= 1:
        return ids, vecs, None
    # Unique over the reversed ids finds each id's last row.
    _, last = np.unique(ids[::-1], return_index=True)
    if last.size == ids.size:
        return ids, vecs, None
    keep = np.sort(ids.size - 1 - last)
    return ids[keep], vecs[keep], keep


def compare(
    store: VectorStore, catalog_ids: npt.ArrayLike
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Where ``store`` and the catalog's list of ids that should have a vector disagree.

    Returns ``(strays, missing)``, both sorted int64: ``strays`` are in the store but not
    in the catalog, ``missing`` in the catalog but not in the store. Changes nothing: while
    a writer runs, both may be its work in flight (see :mod:`vitdex.vectors.lease`).
    """
    catalog = np.unique(np.asarray(catalog_ids, dtype=np.int64).ravel())
    stored = np.unique(np.asarray(store.ids(), dtype=np.int64).ravel())
    strays = np.setdiff1d(stored, catalog, assume_unique=True)
    missing = np.setdiff1d(catalog, stored, assume_unique=True)
    return strays, missing


# Names the pipeline uses ("cls", "cls@8", "mean@-4") map to readable folder names
# without a hash; within this grammar the mapping is one-to-one because the head holds
# no "_" and the layer part holds no letter but the "m" that stands for "-".
_PLAIN_SPACE = re.compile(r"^([a-z0-9]+)(?:@(-?)([0-9]+))?$")


def sanitize_space_name(name: str) -> str:
    """A folder name for the space ``name``, safe on every filesystem, unique per name.

    ``"cls"`` → ``"cls"``, ``"cls@8"`` → ``"cls_at_8"``, ``"mean@-4"`` → ``"mean_at_m4"``.
    Any other name becomes a readable approximation plus ``"-"`` and a hash of the exact
    name; plain names never contain ``"-"``, so the two forms cannot collide, and case
    differences (which case-insensitive filesystems would merge) always differ in hash.
    """
    if not name:
        raise ValueError("a space name cannot be empty")
    plain = _PLAIN_SPACE.match(name) if len(name) <= 64 else None
    if plain is not None:
        head, minus, layer = plain.groups()
        if layer is None:
            return str(head)
        return f"{head}_at_{'m' if minus else ''}{layer}"
    readable = name.lower().replace("@", "_at_").replace("-", "m")
    readable = re.sub(r"[^a-z0-9_]+", "_", readable)[:64]
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:12]
    return f"{readable}-{digest}"
