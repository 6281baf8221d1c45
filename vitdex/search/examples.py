"""How several example photos, liked and disliked, make one similarity query, and how a
query with a score cut-off is paged.

The scoring rule
----------------
A query of positive examples ``p_1..p_P`` and negative examples ``n_1..n_N`` (at least
one positive) scores each stored photo ``x`` as

    score(x) = mean_i cos(x, p_i) - w * mean_j cos(x, n_j)        (w = negative_weight)

with ``w = 0.5`` unless asked otherwise and the second term left out when there is no
negative. Every stored vector is L2-normalised, so ``cos(x, v) = x . v`` and the rule is
linear in ``x``:

    score(x) = x . (mean_i p_i - w * mean_j n_j)

One inner-product search with that combined vector therefore gives the exact scores of
the rule, on every backend and index type (FAISS flat, HNSW, IVF with any codes, Qdrant):
no candidate list is re-scored, nothing is approximated beyond what the index already
approximates for any query. A space with the ``l2`` metric ranks by distance, which is
not linear in ``x``; combined queries refuse such a space.

Why the mean and not the best of the positives: "best of" (``max_i cos(x, p_i)``) rewards
a photo for matching any single example, so two examples of a dog on a beach bring back
dogs anywhere and beaches without dogs; the mean rewards what the examples share, which
is what people mean by giving several. "Best of" also needs one search per example and a
merge whose cut-offs interact, while the mean is one search whose scores a ``min_score``
cuts exactly. A single example scores plain cosine, as an ordinary query does; a negative
example pushes its look-alikes down by ``w`` times their similarity, and ``w`` below one
keeps a photo that resembles both a positive and a negative ranked by the positive.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from vitdex.errors import ConfigError
from vitdex.vectors.store import SearchHit

__all__ = [
    "DEFAULT_NEGATIVE_WEIGHT",
    "MAX_NEGATIVE_WEIGHT",
    "Example",
    "Query",
    "check_negative_weight",
    "combine",
    "combined_query",
    "page_above",
    "rule_scores",
]

#: How much a negative example counts against a positive one (w in the rule).
DEFAULT_NEGATIVE_WEIGHT = 0.5
#: Past this, negatives drown every positive: almost certainly a typo.
MAX_NEGATIVE_WEIGHT = 10.0


def check_negative_weight(weight: float) -> float:
    """``weight`` if it is a usable negative weight (0 to 10), else :class:`ConfigError`."""
    if not math.isfinite(weight) or not 0.0 <= weight <= MAX_NEGATIVE_WEIGHT:
        raise ConfigError(
            f"negative_weight must be between 0 and {MAX_NEGATIVE_WEIGHT:g}, got {weight!r}"
        )
    return float(weight)


def _rows(vectors: npt.ArrayLike | None, what: str, dim: int | None) -> npt.NDArray[np.float64]:
    arr = np.zeros((0, dim or 0)) if vectors is None else np.asarray(vectors, np.float64)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or (dim is not None and arr.shape[0] and arr.shape[1] != dim):
        raise ValueError(f"{what} must be [n, dim], got shape {arr.shape}")
    return arr


def combine(
    positives: npt.ArrayLike,
    negatives: npt.ArrayLike | None = None,
    negative_weight: float = DEFAULT_NEGATIVE_WEIGHT,
) -> npt.NDArray[np.float32]:
    """The one query vector ``mean(positives) - w * mean(negatives)`` whose inner product
    with a unit vector is that vector's score under the rule (see the module docstring).

    ``positives`` and ``negatives`` are [n, dim] (or one [dim] vector); at least one
    positive is needed, negatives may be none. Computed in float64, returned as float32.
    """
    pos = _rows(positives, "positives", None)
    if pos.shape[0] == 0:
        raise ConfigError("a query needs at least one positive example")
    neg = _rows(negatives, "negatives", pos.shape[1])
    w = check_negative_weight(negative_weight)
    query = pos.mean(axis=0)
    if neg.shape[0]:
        query = query - w * neg.mean(axis=0)
    out: npt.NDArray[np.float32] = query.astype(np.float32)
    return out


def rule_scores(
    vectors: npt.ArrayLike,
    positives: npt.ArrayLike,
    negatives: npt.ArrayLike | None = None,
    negative_weight: float = DEFAULT_NEGATIVE_WEIGHT,
) -> npt.NDArray[np.float64]:
    """The rule computed the long way, for tests: each of ``vectors``' mean cosine to the
    positives minus ``w`` times its mean cosine to the negatives (float64, one per row).

    Cosines are computed as cosines (each side normalised), not through :func:`combine`,
    so that comparing the two checks the algebra as well as the stores.
    """
    x = _rows(vectors, "vectors", None)
    pos = _rows(positives, "positives", x.shape[1])
    neg = _rows(negatives, "negatives", x.shape[1])
    if pos.shape[0] == 0:
        raise ConfigError("a query needs at least one positive example")

    def cosines(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> Any:
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        return a @ b.T

    scores: npt.NDArray[np.float64] = cosines(x, pos).mean(axis=1)
    if neg.shape[0]:
        scores = scores - check_negative_weight(negative_weight) * cosines(x, neg).mean(axis=1)
    return scores


class Example(NamedTuple):
    """One example photo of a query: its name, catalog id (if any) and vector."""

    name: str
    image_id: int | None
    vector: npt.NDArray[np.float32]


class Query(NamedTuple):
    """One search to run: its name, catalog id, vector and the ids left out of its hits."""

    name: str
    image_id: int | None
    vector: npt.NDArray[np.float32]
    skip: tuple[int | None, ...]


def combined_query(
    space: str,
    metric: str,
    positives: Sequence[Example],
    negatives: Sequence[Example],
    negative_weight: float,
) -> Query:
    """The one query of several examples in the space ``space`` (``metric``): named after
    them, leaving every one of them out of its hits.

    More than one example needs the ``ip`` metric (see the module docstring); an example
    both liked and disliked is refused rather than cancelled out.
    """
    if len(positives) > 1 or negatives:
        if metric != "ip":
            raise ConfigError(
                f"space {space!r} ranks by {metric} distance: combining examples needs the "
                "ip metric, whose scores are linear in the stored vector"
            )
        liked = {e.image_id for e in positives if e.image_id is not None}
        both = liked & {e.image_id for e in negatives}
        if both:
            raise ConfigError(f"image {min(both)} cannot be both a positive and a negative example")
    vector = combine(
        np.stack([e.vector for e in positives]) if positives else np.zeros((0, 1)),
        np.stack([e.vector for e in negatives]) if negatives else None,
        negative_weight,
    )
    name = " + ".join(e.name for e in positives)
    name += "".join(f" - {e.name}" for e in negatives)
    image_id = positives[0].image_id if len(positives) == 1 else None
    return Query(name, image_id, vector, tuple(e.image_id for e in (*positives, *negatives)))


def page_above(
    search: Callable[[int], Sequence[SearchHit]],
    *,
    offset: int,
    k: int | None,
    min_score: float | None = None,
    skip: Collection[int] = (),
    first_depth: int = 64,
) -> tuple[list[SearchHit], bool]:
    """One page of a query's hits (best first) and whether more hits follow it.

    ``search(depth)`` returns the ``depth`` best hits of the query (fewer when the store
    holds fewer). Hits whose id is in ``skip`` (the examples themselves) are left out;
    with ``min_score`` so are hits scoring under it. The page is hits ``offset`` to
    ``offset + k`` of what is left (all from ``offset`` when ``k`` is None, which needs a
    ``min_score``). The store is asked again, twice as deep each time, until one hit past
    the page is known, a hit falls under the cut-off (the rest are lower still) or the
    store runs out: a cut-off may keep far more hits than ``k``, and how many is unknown
    until the scores drop under it.
    """
    if k is None and min_score is None:
        raise ConfigError("without a min_score a query needs k (how many hits)")
    need = math.inf if k is None else offset + k + 1
    depth = int(min(need, offset + first_depth) if k is None else need) + len(skip)
    while True:
        raw = search(depth)
        kept = [h for h in raw if h.id not in skip]
        above = kept if min_score is None else [h for h in kept if h.score >= min_score]
        exhausted = len(raw) < depth
        fell_under = len(above) < len(kept)
        if len(above) >= need or exhausted or fell_under:
            break
        depth *= 2
    end = len(above) if k is None else offset + k
    return above[offset:end], len(above) > end
