"""Clustering a space's vectors (spherical k-means, or HDBSCAN) and reading the result.

Vectors are L2-normalised, so spherical k-means on inner products is k-means on cosine
similarity. Runs are stored in ``cluster_runs`` / ``clusters`` / ``cluster_members``;
labels rank clusters by size (0 = largest; HDBSCAN's noise is -1).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from vitdex.db import facets, repo
from vitdex.db.models import Cluster, ClusterMember, ClusterRun, Image, Space, iso
from vitdex.errors import ConfigError, NotFoundError
from vitdex.filters import split_head_label
from vitdex.vectors.store import SearchFilter

if TYPE_CHECKING:
    from vitdex.config import Settings

METHODS = ("kmeans", "hdbscan")
#: Silhouettes are computed on at most this many points: O(n²) beyond that.
SILHOUETTE_SAMPLE = 2000
K_MAX = 50
MEDOIDS = 3
#: k-means restarts (best objective kept): one random start often merges two groups.
NREDO = 5

Progress = Callable[[int, int], None]
Floats = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]


def _normalise(x: npt.NDArray[Any]) -> Floats:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: Floats = x / np.maximum(norms, 1e-12)
    return out


def _kmeans(x: Floats, k: int, seed: int) -> tuple[Floats, Ints, Floats]:
    """Spherical k-means; returns (centroids, labels, similarity to own centroid)."""
    import faiss

    # min_points_per_centroid=1: small libraries are fine, no warning for them.
    km = faiss.Kmeans(
        x.shape[1], k, niter=25, nredo=NREDO, spherical=True, seed=seed, min_points_per_centroid=1
    )
    km.train(x)
    sims, labels = km.index.search(x, 1)
    assert km.centroids is not None
    centroids = _normalise(km.centroids)
    return centroids, labels[:, 0].astype(np.int64), sims[:, 0].astype(np.float32)


def silhouette(x: Floats, labels: Ints, *, sample: int = SILHOUETTE_SAMPLE, seed: int = 0) -> float:
    """Mean silhouette with cosine distance, on a random sample of at most ``sample``."""
    n = len(x)
    if n > sample:
        pick = np.random.default_rng(seed).choice(n, sample, replace=False)
        x, labels = x[pick], labels[pick]
    uniq = np.unique(labels)
    if len(uniq) < 2:
        return 0.0
    dist = 1.0 - x @ x.T
    a = np.zeros(len(x), np.float64)
    b = np.full(len(x), np.inf)
    for c in uniq:
        mask = labels == c
        size = int(mask.sum())
        mean_to_c = dist[:, mask].sum(axis=1)
        own = mask
        # Mean distance to the rest of one's own cluster (excluding oneself).
        a[own] = mean_to_c[own] / max(size - 1, 1)
        other = ~mask
        b[other] = np.minimum(b[other], mean_to_c[other] / size)
    s = (b - a) / np.maximum(np.maximum(a, b), 1e-12)
    sizes = {int(c): int((labels == c).sum()) for c in uniq}
    s[[sizes[int(c)] == 1 for c in labels]] = 0.0  # singletons score 0 by convention
    return float(s.mean())


def auto_k_candidates(n: int) -> list[int]:
    """The few k tried by ``k="auto"``: up to sqrt(n/2)·2, within [2, 50] and below n."""
    upper = min(K_MAX, n - 1, max(2, round(2 * math.sqrt(n / 2))))
    if upper <= 2:
        return [2]
    # About eight values, geometrically spaced: cheap, and fine enough for a silhouette.
    grid = np.unique(np.round(np.geomspace(2, upper, num=min(8, upper - 1))).astype(int))
    return [int(k) for k in grid]


def _hdbscan(x: Floats, min_cluster_size: int) -> Ints:
    try:
        cluster_mod = importlib.import_module("sklearn.cluster")
    except ImportError:
        raise ConfigError(
            "method 'hdbscan' needs scikit-learn (pip install scikit-learn); "
            "use method 'kmeans' without it"
        ) from None
    # Euclidean distance on unit vectors orders pairs exactly as cosine distance does.
    # copy: scikit-learn may otherwise overwrite the caller's array in place.
    model = cluster_mod.HDBSCAN(min_cluster_size=min_cluster_size, metric="euclidean", copy=True)
    return np.asarray(model.fit_predict(x), dtype=np.int64)


def _load_vectors(
    settings: Settings, session: Session, space: Space, flt: SearchFilter | None
) -> tuple[Ints, Floats]:
    from vitdex.vectors.factory import open_store

    if flt is not None and not flt.is_empty():
        wanted = repo.filter_image_ids(session, flt, space.id)
    else:
        wanted = repo.vector_image_ids(session, space.id)
    store = open_store(settings, space.name, space.dim, space.metric)
    try:
        # Only ids both sides agree on: a stray vector or a missing one is skipped.
        ids = np.intersect1d(np.asarray(wanted, dtype=np.int64), store.ids())
        vectors = store.get(ids) if len(ids) else np.zeros((0, space.dim), np.float32)
    finally:
        store.close()
    return ids.astype(np.int64), _normalise(vectors)


def cluster_space(
    settings: Settings,
    sessions: sessionmaker[Session],
    *,
    space: str,
    k: int | str = "auto",
    filter: SearchFilter | None = None,
    method: str = "kmeans",
    seed: int = 0,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    job_id: int | None = None,
    min_cluster_size: int = 5,
) -> int:
    """Cluster the vectors of ``space`` (restricted by ``filter``); returns the run id.

    ``k`` is a number of clusters or ``"auto"`` (the best mean silhouette over a few
    candidates). ``method`` is ``"kmeans"`` or ``"hdbscan"`` (needs scikit-learn; ``k``
    is ignored). ``progress(done, total)`` counts steps; ``should_stop`` is polled
    between steps and raises :class:`~vitdex.db.jobs.JobCancelled` when true.
    """
    from vitdex.db.jobs import JobCancelled

    if method not in METHODS:
        raise ConfigError(f"unknown clustering method {method!r} (one of: {', '.join(METHODS)})")
    if isinstance(k, str) and k != "auto":
        try:
            k = int(k)
        except ValueError:
            raise ConfigError(f"k must be a number or 'auto', not {k!r}") from None
    report = progress or (lambda _done, _total: None)
    stop = should_stop or (lambda: False)

    with sessions() as session:
        space_row = repo.get_space(session, space)
        ids, x = _load_vectors(settings, session, space_row, filter)
        empty = filter is not None and not len(ids)
        misses = facets.filter_misses(session, filter) if filter is not None and empty else []
    n = len(ids)
    if n < 2:
        why = "".join(f"; {m.message}" for m in misses)
        raise ConfigError(
            f"space {space!r} has {n} matching vectors; clustering needs 2 or more{why}"
        )
    if isinstance(k, int) and not 2 <= k <= min(n, 1000):
        raise ConfigError(f"k must lie between 2 and {min(n, 1000)} for {n} images, not {k}")

    score: float | None = None
    params: dict[str, Any] = {"k": k, "seed": seed}
    if filter is not None and not filter.is_empty():
        params["filter"] = filter_to_params(filter)
    if method == "kmeans":
        candidates = auto_k_candidates(n) if k == "auto" else [int(k)]
        total = len(candidates) + 1
        best: tuple[float, Floats, Ints, Floats] | None = None
        tried: dict[str, float] = {}
        for step, cand in enumerate(candidates):
            if stop():
                raise JobCancelled()
            centroids, labels, sims = _kmeans(x, cand, seed)
            s = silhouette(x, labels, seed=seed) if len(candidates) > 1 else float("nan")
            tried[str(cand)] = round(s, 4)
            if best is None or s > best[0]:
                best = (s, centroids, labels, sims)
            report(step + 1, total)
        assert best is not None
        _, centroids, labels, sims = best
        if len(candidates) > 1:
            params["silhouettes"] = tried
        score = silhouette(x, labels, seed=seed)
    else:
        params["min_cluster_size"] = min_cluster_size
        total = 2
        labels = _hdbscan(x, min_cluster_size)
        report(1, total)
        found = sorted(int(c) for c in np.unique(labels) if c >= 0)
        centroids = np.zeros((max(found, default=-1) + 1, x.shape[1]), np.float32)
        for c in found:
            centroids[c] = x[labels == c].mean(axis=0)
        centroids = _normalise(centroids) if len(centroids) else centroids
        sims = np.ones(n, np.float32)
        real = labels >= 0
        sims[real] = np.einsum("ij,ij->i", x[real], centroids[labels[real]])
        score = silhouette(x[real], labels[real], seed=seed) if real.sum() > 2 else None
    if stop():
        raise JobCancelled()

    distances = np.clip(1.0 - sims, 0.0, 2.0)
    run_id = _store_run(
        sessions,
        space_row.id,
        method=method,
        params=params,
        ids=ids,
        labels=labels,
        distances=distances,
        score=score,
        job_id=job_id,
    )
    report(total, total)
    return run_id


def _store_run(
    sessions: sessionmaker[Session],
    space_id: int,
    *,
    method: str,
    params: dict[str, Any],
    ids: Ints,
    labels: Ints,
    distances: npt.NDArray[np.float32],
    score: float | None,
    job_id: int | None,
) -> int:
    # Relabel by size, largest first, so label 0 means the same thing in every run.
    raw = [int(c) for c in np.unique(labels) if c >= 0]
    raw.sort(key=lambda c: (-int((labels == c).sum()), c))
    relabel = {c: new for new, c in enumerate(raw)}
    if (labels < 0).any():
        relabel[-1] = -1
    inertia = float(distances[labels >= 0].sum())
    with sessions() as session:
        run = ClusterRun(
            job_id=job_id,
            space_id=space_id,
            method=method,
            k=len(raw),
            params=params,
            n_images=len(ids),
            inertia=inertia,
            score=None if score is None or math.isnan(score) else score,
        )
        session.add(run)
        session.flush()
        rows: list[dict[str, Any]] = []
        for old, new in sorted(relabel.items(), key=lambda kv: kv[1]):
            mask = labels == old
            order = np.lexsort((ids[mask], distances[mask]))
            members, dists = ids[mask][order], distances[mask][order]
            cluster = Cluster(
                run_id=run.id,
                label=new,
                size=len(members),
                medoid_image_id=int(members[0]) if new >= 0 else None,
            )
            session.add(cluster)
            session.flush()
            rows.extend(
                {
                    "run_id": run.id,
                    "cluster_id": cluster.id,
                    "image_id": int(i),
                    "distance": float(d),
                }
                for i, d in zip(members, dists, strict=True)
            )
        for start in range(0, len(rows), 5000):
            session.execute(insert(ClusterMember), rows[start : start + 5000])
        session.commit()
        return run.id


# --------------------------------------------------------------------------- reading


def _run_dict(run: ClusterRun, space_name: str) -> dict[str, Any]:
    return {
        "id": run.id,
        "job_id": run.job_id,
        "space": space_name,
        "method": run.method,
        "k": run.k,
        "params": dict(run.params or {}),
        "n_images": run.n_images,
        "inertia": run.inertia,
        "score": run.score,
        "created_at": iso(run.created_at),
    }


def get_cluster_run(
    session: Session,
    run_id: int,
    *,
    members_limit: int = 20,
    members_offset: int = 0,
    cluster: int | None = None,
) -> dict[str, Any]:
    """A run with its clusters: size, medoid ids (the ``MEDOIDS`` members closest to the
    centroid) and one page of members (id, distance and file path), closest first.

    ``cluster`` (a label) keeps only that cluster. :class:`NotFoundError` for an unknown
    run or label.
    """
    run = session.get(ClusterRun, run_id)
    if run is None:
        raise NotFoundError(f"no cluster run with id {run_id}")
    space_name = session.scalar(select(Space.name).where(Space.id == run.space_id)) or ""
    stmt = select(Cluster).where(Cluster.run_id == run_id).order_by(Cluster.label)
    if cluster is not None:
        stmt = stmt.where(Cluster.label == cluster)
    clusters = list(session.scalars(stmt))
    if cluster is not None and not clusters:
        raise NotFoundError(f"cluster run {run_id} has no cluster {cluster}")
    members_limit = max(0, members_limit)
    members_offset = max(0, members_offset)

    # One query for every cluster's medoids and page: rank members within their cluster.
    rank = (
        func.row_number()
        .over(
            partition_by=ClusterMember.cluster_id,
            order_by=(ClusterMember.distance, ClusterMember.image_id),
        )
        .label("rank")
    )
    ranked = (
        select(ClusterMember.cluster_id, ClusterMember.image_id, ClusterMember.distance, rank)
        .where(
            ClusterMember.run_id == run_id,
            ClusterMember.cluster_id.in_([c.id for c in clusters] or [-1]),
        )
        .subquery()
    )
    lo, hi = members_offset + 1, members_offset + members_limit
    # Members cascade away with their image, so the join drops none.
    rows = session.execute(
        select(ranked.c.cluster_id, ranked.c.image_id, ranked.c.distance, ranked.c.rank, Image.path)
        .join(Image, Image.id == ranked.c.image_id)
        .where((ranked.c.rank <= MEDOIDS) | ranked.c.rank.between(lo, hi))
        .order_by(ranked.c.cluster_id, ranked.c.rank)
    )
    medoids: dict[int, list[int]] = {}
    pages: dict[int, list[dict[str, Any]]] = {}
    for cluster_id, image_id, distance, position, path in rows:
        if position <= MEDOIDS:
            medoids.setdefault(cluster_id, []).append(int(image_id))
        if lo <= position <= hi:
            pages.setdefault(cluster_id, []).append(
                {"image_id": int(image_id), "distance": round(float(distance), 6), "path": path}
            )
    out = _run_dict(run, space_name)
    out["clusters"] = [
        {
            "id": c.id,
            "label": c.label,
            "size": c.size,
            "noise": c.label < 0,
            "medoid_image_id": c.medoid_image_id,
            "medoid_image_ids": medoids.get(c.id, []) if c.label >= 0 else [],
            "members": pages.get(c.id, []),
            "members_offset": members_offset,
            "members_limit": members_limit,
        }
        for c in clusters
    ]
    return out


def list_cluster_runs(
    session: Session, *, space: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[dict[str, Any]], int]:
    """Runs newest first (without their clusters), optionally of one space, and the total."""
    stmt = select(ClusterRun, Space.name).join(Space, Space.id == ClusterRun.space_id)
    count = select(func.count()).select_from(ClusterRun).join(Space)
    if space is not None:
        stmt, count = stmt.where(Space.name == space), count.where(Space.name == space)
    total = int(session.scalar(count) or 0)
    rows = session.execute(stmt.order_by(ClusterRun.id.desc()).limit(limit).offset(offset))
    return [_run_dict(run, name) for run, name in rows], total


# --------------------------------------------------------------------------- params


def filter_to_params(flt: SearchFilter) -> dict[str, Any]:
    """A JSON-ready dict of the filter's set conditions."""
    out: dict[str, Any] = {}
    if flt.library_ids:
        out["library_ids"] = list(flt.library_ids)
    for name in ("path_prefix", "camera_make", "camera_model", "label"):
        value = getattr(flt, name)
        if value is not None:
            out[name] = value
    for name in ("taken_after", "taken_before"):
        value = getattr(flt, name)
        if value is not None:
            out[name] = value.isoformat()
    if flt.tags:
        out["tags"] = list(flt.tags)
    if flt.hide_duplicates:
        out["hide_duplicates"] = True
    if flt.head_labels:
        out["head_labels"] = list(flt.head_labels)
    return out


def filter_from_params(data: Mapping[str, Any] | None) -> SearchFilter | None:
    """The :class:`SearchFilter` a job's ``params["filter"]`` describes (``None`` if empty)."""
    if not data:
        return None
    known = {"library_ids", "path_prefix", "taken_after", "taken_before"}
    known |= {"camera_make", "camera_model", "label", "tags", "hide_duplicates", "head_labels"}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown filter fields: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {k: v for k, v in data.items() if v is not None}
    if "library_ids" in values:
        values["library_ids"] = tuple(int(i) for i in values["library_ids"])
    if "tags" in values:
        values["tags"] = tuple(str(t) for t in values["tags"])
    if "hide_duplicates" in values:
        values["hide_duplicates"] = bool(values["hide_duplicates"])
    if "head_labels" in values:
        raw = values["head_labels"]
        if isinstance(raw, str) or not isinstance(raw, list | tuple):
            raise ConfigError(f"head_labels must be a list of HEAD:LABEL, got {raw!r}")
        try:
            values["head_labels"] = tuple(":".join(split_head_label(str(v))) for v in raw)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    for name in ("taken_after", "taken_before"):
        if isinstance(values.get(name), str):
            try:
                values[name] = datetime.fromisoformat(values[name])
            except ValueError:
                raise ConfigError(f"{name} is not an ISO date: {values[name]!r}") from None
    flt = SearchFilter(**values)
    return None if flt.is_empty() else flt
