"""2-D maps of a space's vectors: PCA always, UMAP when ``umap-learn`` is installed.

A map is computed once (as a job) and cached (see :mod:`vitdex.search.map_cache`: a
map whose space's vectors changed since is stale and never served as current).

PCA streams the vectors from the store in chunks, twice: once to accumulate the mean and
the covariance (``dim × dim``, float64), once to project. Memory stays at a chunk plus the
covariance whatever the number of vectors.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from vitdex.db import jobs, repo
from vitdex.db.models import (
    Cluster,
    ClusterMember,
    ClusterRun,
    Image,
    ImageLabel,
    ImageVector,
    iso,
    utcnow,
)
from vitdex.errors import ConfigError, NotFoundError
from vitdex.search.map_cache import (
    CachedMap,
    check_method,
    load_map,
    map_path,
    point_count,
    read_map,
    save_map,
    vectors_key,
)

if TYPE_CHECKING:
    from vitdex.config import Settings

#: Vectors read from the store at a time (4096 × 768 float32 is 12 MB).
CHUNK = 4096
#: Up to this dimension the covariance is fully eigen-decomposed; above, the top
#: components come from a few rounds of subspace iteration (cheaper, as exact to float64).
EIGH_MAX_DIM = 1024
#: UMAP runs on this many principal components (standard practice, and it keeps memory low).
UMAP_INPUT_DIM = 50

Floats = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]
Progress = Callable[[int, int], None]


# --------------------------------------------------------------------------- PCA


def _orient(components: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Flip each component so its largest entry is positive: the same data always gives
    the same picture, not a mirror image of it."""
    out = components.copy()
    for j in range(out.shape[1]):
        if out[np.argmax(np.abs(out[:, j])), j] < 0:
            out[:, j] = -out[:, j]
    return out


def _top_eigenvectors(cov: npt.NDArray[np.float64], k: int) -> npt.NDArray[np.float64]:
    """The ``k`` eigenvectors of the symmetric ``cov`` with the largest eigenvalues, as
    columns, largest first."""
    dim = cov.shape[0]
    k = min(k, dim)
    if dim <= EIGH_MAX_DIM:
        _, vecs = np.linalg.eigh(cov)
        return np.ascontiguousarray(vecs[:, ::-1][:, :k])
    # Subspace iteration with oversampling: converges fast for the few leading components.
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((dim, min(dim, k + 10))))
    for _ in range(12):
        q, _ = np.linalg.qr(cov @ q)
    small = q.T @ cov @ q
    _, vecs = np.linalg.eigh(small)
    return np.ascontiguousarray((q @ vecs)[:, ::-1][:, :k])


@dataclass(frozen=True)
class PcaFit:
    """The mean and the leading principal axes (columns) of a set of vectors."""

    mean: npt.NDArray[np.float64]
    components: npt.NDArray[np.float64]

    def project(self, x: npt.NDArray[Any]) -> Floats:
        """Coordinates of the rows of ``x`` along the components (float32)."""
        out: Floats = ((np.asarray(x, np.float64) - self.mean) @ self.components).astype(np.float32)
        return out


def pca_fit(chunks: Iterable[npt.NDArray[Any]], dim: int, k: int = 2) -> PcaFit:
    """Fit a ``k``-component PCA over row chunks, in one pass.

    Sums are taken around the first chunk's mean (a shift), so that subtracting the mean
    at the end loses no precision even when every vector shares a large common direction,
    as image embeddings do.
    """
    n = 0
    shift: npt.NDArray[np.float64] | None = None
    total = np.zeros(dim, np.float64)
    scatter = np.zeros((dim, dim), np.float64)
    for chunk in chunks:
        if not len(chunk):
            continue
        if shift is None:
            shift = np.asarray(chunk, np.float64).mean(axis=0)
        centred = (np.asarray(chunk, np.float64) - shift).astype(np.float32)
        total += centred.sum(axis=0, dtype=np.float64)
        scatter += (centred.T @ centred).astype(np.float64)
        n += len(chunk)
    if shift is None:
        raise ConfigError("a map needs at least one vector")
    mean_shifted = total / n
    cov = (scatter - n * np.outer(mean_shifted, mean_shifted)) / max(n - 1, 1)
    return PcaFit(mean=shift + mean_shifted, components=_orient(_top_eigenvectors(cov, k)))


def pca_2d(x: npt.NDArray[Any], *, chunk: int = CHUNK) -> Floats:
    """PCA to two dimensions of the rows of ``x`` (float32 [n, 2]), computed chunk-wise."""
    fit = pca_fit((x[s : s + chunk] for s in range(0, len(x), chunk)), x.shape[1], 2)
    return np.concatenate([fit.project(x[s : s + chunk]) for s in range(0, len(x), chunk)])


def _umap(x: Floats, seed: int) -> Floats:
    umap = importlib.import_module("umap")
    n = len(x)
    if n < 4:
        raise ConfigError(f"a UMAP map needs at least 4 vectors, the space has {n}; use 'pca'")
    reducer = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=seed)
    return np.asarray(reducer.fit_transform(x), np.float32)


# --------------------------------------------------------------------------- computing


def compute_map(
    settings: Settings,
    sessions: sessionmaker[Session],
    *,
    space: str,
    method: str = "pca",
    seed: int = 0,
    force: bool = False,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Compute (or reuse) the map of ``space``; returns ``{"space", "method", "points",
    "reused"}``.

    A cached map whose key still matches is reused unless ``force``. ``progress(done,
    total)`` counts chunks; ``should_stop`` is polled between chunks and raises
    :class:`~vitdex.db.jobs.JobCancelled` when true.
    """
    from vitdex.vectors.factory import open_store

    check_method(method)
    report = progress or (lambda _done, _total: None)
    stop = should_stop or (lambda: False)
    path = map_path(settings, space, method)
    with sessions() as session:
        space_row = repo.get_space(session, space)
        # The key is taken before reading: a change made meanwhile leaves the map stale.
        key = vectors_key(session, space_row)
        wanted = np.asarray(repo.vector_image_ids(session, space_row.id), np.int64)
        dim, metric = space_row.dim, space_row.metric
    if not force:
        cached = load_map(path, arrays=False)
        if cached is not None and cached.key == key:
            report(1, 1)
            return {"space": space, "method": method, "points": point_count(path), "reused": True}

    store = open_store(settings, space, dim, metric)
    try:
        # Only ids both sides agree on: a stray vector or a missing one is left out.
        ids = np.intersect1d(wanted, store.ids()).astype(np.int64)
        if not len(ids):
            raise ConfigError(f"space {space!r} has no vectors to map yet: index a library")
        starts = range(0, len(ids), CHUNK)
        total = 2 * len(starts) + (2 if method == "umap" else 1)
        done = 0

        def chunks() -> Iterator[Floats]:
            nonlocal done
            for s in starts:
                if stop():
                    raise jobs.JobCancelled()
                yield _normalise(store.get(ids[s : s + CHUNK]))
                done += 1
                report(done, total)

        k = 2 if method == "pca" else min(UMAP_INPUT_DIM, dim)
        fit = pca_fit(chunks(), dim, k)
        xy = np.concatenate([fit.project(c) for c in chunks()])
    finally:
        store.close()
    if method == "umap":
        xy = _umap(xy, seed)
    if stop():
        raise jobs.JobCancelled()
    now = iso(utcnow()) or ""
    save_map(path, CachedMap(space, method, key, now, ids, xy.astype(np.float32)))
    report(total, total)
    return {"space": space, "method": method, "points": len(ids), "reused": False}


def _normalise(x: npt.NDArray[Any]) -> Floats:
    x = np.asarray(x, dtype=np.float32)
    out: Floats = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return out


def queue_map(
    sessions: sessionmaker[Session], space: str, method: str, *, force: bool = False
) -> dict[str, Any]:
    """A queued ``map`` job row for ``space`` (committed; the caller submits it), or the
    one already queued or running for the same space and method.

    An unknown space or method is refused now rather than failing the job later.
    """
    check_method(method)
    with sessions() as session:
        repo.get_space(session, space)
        job, _ = jobs.enqueue_job_row(
            session,
            "map",
            {"space": space, "method": method, "force": force},
            dedupe_key=f"map:{method}:{space}",
        )
        session.commit()
        return jobs.job_to_dict(job)


# --------------------------------------------------------------------------- points


def map_points(
    settings: Settings,
    sessions: sessionmaker[Session],
    space: str,
    method: str,
    cluster_run: int | None,
) -> tuple[CachedMap, dict[str, Any]]:
    """A fresh map of ``space`` and the colour keys of its points, in one session (404
    when not computed yet, 409 when stale: see :func:`read_map`)."""
    with sessions() as session:
        cached = read_map(settings, session, space, method)
        return cached, point_keys(session, space, cached.ids, cluster_run)


def display_xy(xy: Floats) -> Floats:
    """``xy`` moved and scaled into [0, 1] (the longer side spans it; the aspect kept)."""
    if not len(xy):
        return xy
    lo = xy.min(axis=0)
    span = float((xy.max(axis=0) - lo).max())
    out: Floats = ((xy - lo) / (span if span > 0 else 1.0)).astype(np.float32)
    return out


def point_keys(
    session: Session, space_name: str, ids: Ints, cluster_run: int | None
) -> dict[str, Any]:
    """What a map's points are coloured by, one value per id (``ids`` sorted):
    ``label`` (index into ``label_names``, most common first; -1 for none), ``library_id``,
    and with ``cluster_run`` its ``cluster`` label per point (None when not in the run).
    """
    space = repo.get_space(session, space_name)
    out: dict[str, Any] = {}
    top = session.execute(
        select(ImageLabel.image_id, ImageLabel.label)
        .join(ImageVector, ImageVector.image_id == ImageLabel.image_id)
        .where(ImageVector.space_id == space.id, ImageLabel.rank == 1)
    ).all()
    label_idx = np.full(len(ids), -1, np.int64)
    names: list[str] = []
    if top:
        top_ids = np.asarray([r[0] for r in top], np.int64)
        values = [str(r[1]) for r in top]
        uniq, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
        order = np.lexsort((uniq, -counts))  # most common first, then by name
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        names = [str(uniq[i]) for i in order]
        _fill(label_idx, ids, top_ids, rank[inverse])
    out["label"], out["label_names"] = label_idx.tolist(), names

    libs = session.execute(
        select(Image.id, Image.library_id)
        .join(ImageVector, ImageVector.image_id == Image.id)
        .where(ImageVector.space_id == space.id)
    ).all()
    library = np.zeros(len(ids), np.int64)
    if libs:
        _fill(
            library,
            ids,
            np.asarray([r[0] for r in libs], np.int64),
            np.asarray([r[1] for r in libs], np.int64),
        )
    out["library_id"] = library.tolist()

    out["cluster"] = None
    if cluster_run is not None:
        run = session.get(ClusterRun, cluster_run)
        if run is None:
            raise NotFoundError(f"no cluster run with id {cluster_run}")
        if run.space_id != space.id:
            raise ConfigError(
                f"cluster run {cluster_run} clustered another space, not {space.name!r}"
            )
        members = session.execute(
            select(ClusterMember.image_id, Cluster.label)
            .join(Cluster, Cluster.id == ClusterMember.cluster_id)
            .where(ClusterMember.run_id == cluster_run)
        ).all()
        cluster = np.full(len(ids), np.iinfo(np.int64).min, np.int64)
        if members:
            _fill(
                cluster,
                ids,
                np.asarray([r[0] for r in members], np.int64),
                np.asarray([r[1] for r in members], np.int64),
            )
        none = np.iinfo(np.int64).min
        out["cluster"] = [None if c == none else int(c) for c in cluster.tolist()]
    return out


def _fill(out: Ints, ids: Ints, keys: Ints, values: Ints) -> None:
    """``out[i] = values[j]`` where ``ids[i] == keys[j]`` (``ids`` sorted)."""
    at = np.searchsorted(ids, keys)
    ok = at < len(ids)
    ok[ok] = ids[at[ok]] == keys[ok]
    out[at[ok]] = values[ok]
