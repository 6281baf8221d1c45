"""How a capped dataset picks among its eligible candidates: the samplers.

Eligibility (score, near-duplicates) is decided first, in :mod:`.selection`; a sampler
then chooses ``quota`` of the eligible candidates. Every sampler only ever chooses among
candidates that are already more than ``min_distance`` apart from each other and from
the seeds, so the minimum distance holds whichever sampler runs.

- **nearest**: the best scores (optionally re-ranked by maximal marginal relevance): the
  photos most like the seeds, which for a burst of holiday shots means one afternoon.
- **diverse**: greedy farthest-point sampling: start from the seeds (or the best
  candidate when no seed is a catalog image) and repeatedly take the candidate whose
  highest cosine to anything taken is lowest. Each pick is the photo least like the set
  so far, so a small cap covers the extremes of poses, light and places.
- **representative**: spherical k-means over the eligible candidates with k = quota, and
  for each centre the candidate nearest to it. Where farthest-point sampling favours
  outliers, this spends the picks where the photos are: a big group of similar photos
  gets one representative, as does a small one, and a lone outlier rarely gets one.

Pure functions of unit vectors (rows of a float32 matrix) and indices into it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "KMEANS_SEED",
    "SAMPLERS",
    "Cluster",
    "farthest_point",
    "kmeans_representatives",
    "mmr",
]

Floats = npt.NDArray[np.float32]

#: The sampler names, the default first.
SAMPLERS = ("nearest", "diverse", "representative")
#: Seed of the k-means initialisation: the same candidates give the same picks.
KMEANS_SEED = 1234
#: k-means restarts (the best objective is kept): one start can merge two groups.
_NREDO = 5
_NITER = 25
#: Multiply-adds k-means may spend (about 10 s on two cores): restarts, then iterations,
#: are cut for the rare huge run (10 000 candidates into 5 000 picks) so it stays bounded.
_BUDGET = 4e10
#: Most centres seeded by k-means++ (random starts beyond).
_PLUS_PLUS_MAX = 256


@dataclass(frozen=True)
class Cluster:
    """One k-means cluster of candidates: its pick (nearest the centre) and members.

    Indices are into the candidate matrix; ``members`` in the order given (rank order).
    """

    pick: int
    members: tuple[int, ...]


def mmr(
    eligible: Sequence[int],
    scores: Sequence[float],
    vectors: Floats,
    seeds: Floats,
    lam: float,
    quota: int,
) -> list[int]:
    """Greedy maximal marginal relevance: ``quota`` picks out of ``eligible``.

    Each next pick maximises ``lam·score − (1−lam)·(highest cosine to anything picked)``,
    the seeds counting as picked.
    """
    remaining = list(eligible)
    # Highest cosine of each remaining candidate to anything picked (the seeds to start).
    if len(seeds) and len(remaining):
        nearest = (vectors[remaining] @ seeds.T).max(axis=1)
    else:
        nearest = np.zeros(len(remaining), np.float32)
    nearest_by = dict(zip(remaining, nearest.tolist(), strict=True))
    picked: list[int] = []
    has_picked = len(seeds) > 0
    while remaining and len(picked) < quota:
        gains = [
            lam * float(scores[i]) - (1.0 - lam) * (nearest_by[i] if has_picked else 0.0)
            for i in remaining
        ]
        best = remaining[int(np.argmax(gains))]
        picked.append(best)
        remaining.remove(best)
        has_picked = True
        for i in remaining:
            nearest_by[i] = max(nearest_by[i], float(vectors[i] @ vectors[best]))
    return picked


def farthest_point(
    eligible: Sequence[int], vectors: Floats, seeds: Floats, quota: int
) -> list[int]:
    """Greedy farthest-point sampling: ``quota`` picks out of ``eligible``, in pick order.

    With no seed the first pick is ``eligible[0]`` (the best score). Each next pick has
    the lowest highest-cosine to the seeds and the picks so far, i.e. it maximises the
    minimum cosine distance at its step; ties go to the earlier (better ranked) one.
    """
    pool = list(eligible)
    if quota <= 0 or not pool:
        return []
    cand = vectors[pool]
    # The highest cosine of each candidate to anything picked; +inf marks a pick.
    picked: list[int] = []
    if len(seeds):
        nearest = (cand @ seeds.T).max(axis=1).astype(np.float64)
    else:
        picked.append(0)
        nearest = (cand @ cand[0]).astype(np.float64)
        nearest[0] = np.inf
    while len(picked) < min(quota, len(pool)):
        j = int(np.argmin(nearest))
        picked.append(j)
        nearest = np.maximum(nearest, cand @ cand[j])
        nearest[j] = np.inf
    return [pool[j] for j in picked]


def kmeans_representatives(
    eligible: Sequence[int],
    vectors: Floats,
    quota: int,
    *,
    seed: int = KMEANS_SEED,
) -> list[Cluster]:
    """Spherical k-means with k = ``quota`` over ``eligible``; each cluster's pick is its
    member nearest the centre. Clusters come largest first (ties: the better-ranked
    pick first).

    With ``quota`` at least the number of candidates every candidate is its own cluster.
    A cluster k-means leaves empty yields no pick; the caller tops the picks up.
    """
    pool = list(eligible)
    if quota <= 0 or not pool:
        return []
    if quota >= len(pool):
        return [Cluster(i, (i,)) for i in pool]
    import faiss

    x = np.ascontiguousarray(vectors[pool], dtype=np.float32)
    per_iter = float(len(pool) * quota * x.shape[1])
    niter = int(np.clip(_BUDGET // per_iter, 5, _NITER))
    params: dict[str, object] = {
        "niter": niter,
        "nredo": int(np.clip(_BUDGET // (per_iter * niter), 1, _NREDO)),
        "spherical": True,
        "seed": seed,
        # Small candidate sets are the normal case here: no warning for them.
        "min_points_per_centroid": 1,
    }
    init = getattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS", None)
    if init is not None and quota <= _PLUS_PLUS_MAX:
        # k-means++ spreads the first centres over the groups; random starts often put
        # two centres in one group and leave another without one. It adds its centres
        # one at a time, though: past a few hundred that costs more than the clustering.
        params["init_method"] = init
    km = faiss.Kmeans(x.shape[1], quota, **params)
    km.train(x)
    assert km.centroids is not None
    centres = np.asarray(km.centroids, np.float32)
    centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    sims = x @ centres.T
    labels = np.argmax(sims, axis=1)
    clusters = []
    for c in range(quota):
        members = np.flatnonzero(labels == c)
        if not len(members):
            continue
        # argmax takes the first of equals: the best-ranked member wins a tie.
        best = int(members[int(np.argmax(sims[members, c]))])
        clusters.append(Cluster(pool[best], tuple(pool[int(m)] for m in members)))
    rank = {i: r for r, i in enumerate(pool)}
    clusters.sort(key=lambda cl: (-len(cl.members), rank[cl.pick]))
    return clusters
