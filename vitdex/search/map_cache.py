"""Where 2-D maps are kept: a cache file per (space, method) and the key that says
whether it still shows the space's vectors.

A map is computed once (as a job) and cached under ``VITDEX_HOME/maps`` with the key of
the vectors it was made from (:func:`vectors_key`). A cached map whose key no longer
matches the catalog's is *stale*: it may show deleted images or old positions, so it is
never served as current (see :func:`read_map`). Files are written to a temporary name
and renamed, so a reader sees the old map or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from vitdex.db import repo
from vitdex.db.models import ImageVector, Space
from vitdex.errors import ConfigError, ConflictError, NotFoundError
from vitdex.vectors.store import sanitize_space_name

if TYPE_CHECKING:
    from vitdex.config import Settings

METHODS = ("pca", "umap")

Floats = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]


def available_methods() -> list[str]:
    """The methods this installation can compute: ``pca``, and ``umap`` with umap-learn."""
    return ["pca", "umap"] if importlib.util.find_spec("umap") is not None else ["pca"]


def check_method(method: str) -> str:
    """``method`` if known and computable here, else a :class:`ConfigError` saying why."""
    if method not in METHODS:
        raise ConfigError(f"unknown map method {method!r} (one of: {', '.join(METHODS)})")
    if method not in available_methods():
        raise ConfigError("method 'umap' needs umap-learn (pip install umap-learn); use 'pca'")
    return method


def vectors_key(session: Session, space: Space) -> str:
    """A digest that changes whenever the space's vectors do.

    It covers the space row (a space dropped and made again is new), and over the
    space's ``image_vectors`` rows their number, the sum and maximum of their image ids
    (an image added or deleted) and their latest ``created_at`` (every (re-)embedding
    rewrites an image's row with the time of writing, so a re-index changes it).
    """
    count, id_sum, id_max, latest = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(ImageVector.image_id), 0),
            func.max(ImageVector.image_id),
            func.max(ImageVector.created_at),
        ).where(ImageVector.space_id == space.id)
    ).one()
    parts = [
        space.id,
        str(space.created_at),
        space.model_id,
        space.model_revision,
        space.dim,
        int(count),
        int(id_sum),
        None if id_max is None else int(id_max),
        None if latest is None else str(latest),
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def map_path(settings: Settings, space: str, method: str) -> Path:
    """Where the map of ``space`` by ``method`` is cached."""
    return settings.storage.home / "maps" / f"{sanitize_space_name(space)}.{method}.npz"


@dataclass(frozen=True)
class CachedMap:
    """A map read from its cache file."""

    space: str
    method: str
    key: str
    computed_at: str
    #: Image ids, sorted.
    ids: Ints
    #: Raw projection coordinates [n, 2], row i for ``ids[i]``.
    xy: Floats


def save_map(path: Path, cached: CachedMap) -> None:
    """Write ``cached`` to ``path`` atomically (fsync, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as out:
            np.savez(
                out,
                ids=cached.ids.astype(np.int64),
                xy=cached.xy.astype(np.float32),
                key=np.array(cached.key),
                space=np.array(cached.space),
                method=np.array(cached.method),
                computed_at=np.array(cached.computed_at),
            )
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)  # readers see the old map or the new one, never half of one
    finally:
        tmp.unlink(missing_ok=True)


def load_map(path: Path, *, arrays: bool) -> CachedMap | None:
    """The cached map at ``path`` (``arrays=False``: without reading its points), or None
    when there is none or it cannot be read (a map is cheap to compute again)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return CachedMap(
                space=str(data["space"]),
                method=str(data["method"]),
                key=str(data["key"]),
                computed_at=str(data["computed_at"]),
                ids=data["ids"] if arrays else np.zeros(0, np.int64),
                xy=data["xy"] if arrays else np.zeros((0, 2), np.float32),
            )
    except (OSError, ValueError, KeyError):
        return None


def map_status(settings: Settings, session: Session, space: Space, method: str) -> dict[str, Any]:
    """``{"space", "method", "state", "points", "computed_at"}``; ``state`` is
    ``"missing"`` (never computed), ``"stale"`` (the vectors changed since) or ``"fresh"``."""
    cached = load_map(map_path(settings, space.name, method), arrays=False)
    state = "missing"
    points: int | None = None
    if cached is not None:
        state = "fresh" if cached.key == vectors_key(session, space) else "stale"
        points = point_count(map_path(settings, space.name, method))
    return {
        "space": space.name,
        "method": method,
        "state": state,
        "points": points,
        "computed_at": cached.computed_at if cached else None,
    }


def point_count(path: Path) -> int | None:
    """How many points the map at ``path`` holds (None when unreadable)."""
    try:
        with np.load(path, allow_pickle=False, mmap_mode=None) as data:
            return int(data["ids"].shape[0])
    except (OSError, ValueError, KeyError):
        return None


def list_maps(settings: Settings, sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    """The status of every (space, method) this installation can compute."""
    with sessions() as session:
        return [
            map_status(settings, session, space, method)
            for space in repo.list_spaces(session)
            for method in available_methods()
        ]


def read_map(settings: Settings, session: Session, space: str, method: str) -> CachedMap:
    """The fresh cached map of ``space``: :class:`NotFoundError` when never computed,
    :class:`ConflictError` when the space's vectors changed since (compute it again)."""
    if method not in METHODS:
        check_method(method)  # says which methods there are
    space_row = repo.get_space(session, space)
    cached = load_map(map_path(settings, space, method), arrays=True)
    if cached is None:
        raise NotFoundError(
            f"no {method} map of space {space!r} yet: POST /api/v1/maps to compute it"
        )
    if cached.key != vectors_key(session, space_row):
        raise ConflictError(
            f"the {method} map of space {space!r} is out of date (its vectors changed since "
            f"{cached.computed_at}): POST /api/v1/maps to compute it again"
        )
    return cached
