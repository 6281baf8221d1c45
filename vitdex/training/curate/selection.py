"""Which candidates join a DreamBooth dataset, and why: the selection rules.

- **score**: a candidate's cosine similarity to its *closest* seed (the maximum over the
  seeds). Seeds show the subject from different sides; a photo that matches any one of
  them well is a photo of the subject, while the mean would favour the average view and
  punish poses only one seed covers. The ``k`` best-scoring images (seeds left out) are
  the candidates, ranked 1..k by score.
- **seeds** that are catalog images are in, with reason ``seed``. A seed file that is not
  in the catalog steers the search but cannot be an item (index its folder to add it).
- in rank order, a candidate scoring under ``min_score`` is out (``below_min_score``); one
  whose cosine to an item already kept (a seed or a higher-ranked candidate) is at least
  ``dedup`` is out (``near_duplicate``, ``duplicate_of`` names the kept one);
- the eligible rest are in (``neighbour``) until ``max_items`` instance images (seeds
  included) are reached, the others are out (``over_max``). They are taken by score or,
  with ``mmr`` = λ, by maximal marginal relevance: each next pick maximises
  ``λ·score − (1−λ)·(highest cosine to anything picked so far)``, so with a cap the set
  spreads over poses and settings instead of ten shots of one moment.

**Class images** (prior preservation) come from the same index: the neighbours ranked
after the ``k`` instance candidates, i.e. the same kind of subject, further away. With
``class_label`` only images with that predicted label (in their top labels) are drawn.
A class candidate within ``dedup`` of an included instance image is the subject itself
(out, ``near_duplicate``), as is one within ``dedup`` of a class image already drawn;
the others are in (``class``) until ``class_count`` are found (fewer when the index runs
out). Every candidate looked at stays in the dataset with its reason, so a set can be
audited and edited by hand (:mod:`.service`).

Pure functions of vectors and options (no catalog, no index): :mod:`.service` retrieves
the candidates and stores the decisions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from vitdex.db.datasets import ItemReason, ItemRow
from vitdex.errors import ConfigError

__all__ = [
    "DEFAULT_CLASS_COUNT",
    "CurateOptions",
    "Floats",
    "select_class",
    "select_instances",
    "unit_rows",
]

Floats = npt.NDArray[np.float32]

#: Class images drawn when a class prompt is given and no count is.
DEFAULT_CLASS_COUNT = 100
_MAX_K = 10_000


@dataclass(frozen=True)
class CurateOptions:
    """How candidates are drawn and judged (stored with the dataset as its ``params``)."""

    #: Nearest neighbours of the seeds considered as instance candidates.
    k: int = 40
    #: Candidates scoring under this cosine similarity are left out.
    min_score: float | None = None
    #: Cosine similarity at or above which a candidate is a near-duplicate; None: off.
    dedup: float | None = 0.95
    #: At most this many instance images, seeds included; None: no cap.
    max_items: int | None = None
    #: λ of maximal marginal relevance (1 = by score only, 0 = diversity only); None: off.
    mmr: float | None = None
    #: Space to search (default: the first configured one).
    space: str | None = None
    #: Class images to draw; None: DEFAULT_CLASS_COUNT with a class prompt, else 0.
    class_count: int | None = None
    #: Only draw class images with this predicted label.
    class_label: str | None = None

    def check(self, *, has_class_prompt: bool) -> None:
        """Raise :class:`ConfigError` for values out of range."""
        if not 1 <= self.k <= _MAX_K:
            raise ConfigError(f"k must lie between 1 and {_MAX_K}, not {self.k}")
        if self.min_score is not None and not -1.0 <= self.min_score <= 1.0:
            raise ConfigError(f"min-score is a cosine similarity in [-1, 1], not {self.min_score}")
        if self.dedup is not None and not 0.0 < self.dedup <= 1.0:
            raise ConfigError(f"dedup is a cosine similarity in (0, 1], not {self.dedup}")
        if self.max_items is not None and self.max_items < 1:
            raise ConfigError(f"max must be at least 1, not {self.max_items}")
        if self.mmr is not None and not 0.0 <= self.mmr <= 1.0:
            raise ConfigError(f"the MMR lambda lies in [0, 1], not {self.mmr}")
        if self.class_count is not None and not 0 <= self.class_count <= _MAX_K:
            raise ConfigError(f"class-count must lie between 0 and {_MAX_K}")
        if not has_class_prompt and (self.class_count or self.class_label):
            raise ConfigError(
                "class images need a class prompt (e.g. --class-prompt 'a photo of a dog')"
            )

    def resolved_class_count(self, has_class_prompt: bool) -> int:
        """How many class images to draw."""
        if self.class_count is not None:
            return self.class_count
        return DEFAULT_CLASS_COUNT if has_class_prompt else 0


def unit_rows(x: npt.ArrayLike) -> Floats:
    """``x`` (one vector or rows of them) as float32 rows of unit length."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return np.asarray(arr / np.maximum(norms, 1e-12), dtype=np.float32)


class _Kept:
    """The items kept so far, as a growing matrix: one matrix-vector product per
    candidate finds its closest kept item (no re-stacking of every vector each time)."""

    def __init__(self, ids: Sequence[int], vectors: Floats) -> None:
        self.ids = [int(i) for i in ids]
        self._vecs: Floats | None = None
        if self.ids:
            self._vecs = np.empty((max(64, 2 * len(ids)), vectors.shape[1]), dtype=np.float32)
            self._vecs[: len(ids)] = vectors[: len(ids)]

    def add(self, image_id: int, vector: Floats) -> None:
        n = len(self.ids)
        if self._vecs is None:
            self._vecs = np.empty((64, vector.shape[0]), dtype=np.float32)
        elif n == self._vecs.shape[0]:
            self._vecs = np.concatenate([self._vecs, np.empty_like(self._vecs)])
        self._vecs[n] = vector
        self.ids.append(int(image_id))

    def duplicate_of(self, vector: Floats, dedup: float | None) -> int | None:
        """The kept item ``vector`` is a near-duplicate of (cosine >= ``dedup``), if any."""
        if dedup is None or self._vecs is None:
            return None
        sims = self._vecs[: len(self.ids)] @ vector
        j = int(np.argmax(sims))
        return self.ids[j] if float(sims[j]) >= dedup else None


def select_instances(
    seed_ids: Sequence[int],
    seed_vectors: npt.ArrayLike,
    ids: Sequence[int],
    scores: Sequence[float],
    vectors: npt.ArrayLike,
    options: CurateOptions,
) -> list[ItemRow]:
    """Decide every instance candidate (see the module docstring for the rules).

    ``seed_ids``/``seed_vectors`` are the seeds that are catalog images; ``ids``,
    ``scores`` and ``vectors`` the candidates, best score first. Returns the seeds
    (rank 0) and then every candidate (rank 1..) with its reason.
    """
    seed_mat = unit_rows(seed_vectors) if len(seed_ids) else np.zeros((0, 0), np.float32)
    cand = unit_rows(vectors) if len(ids) else np.zeros((0, 0), np.float32)
    rows: list[ItemRow] = [
        ItemRow(int(s), "instance", 0, None, True, ItemReason.SEED.value) for s in seed_ids
    ]
    kept = _Kept(seed_ids, seed_mat)
    decided: dict[int, ItemRow] = {}
    eligible: list[int] = []
    for i, image_id in enumerate(ids):
        rank = i + 1
        score = float(scores[i])
        if options.min_score is not None and score < options.min_score:
            decided[i] = ItemRow(
                int(image_id), "instance", rank, score, False, ItemReason.BELOW_MIN_SCORE.value
            )
            continue
        duplicate = kept.duplicate_of(cand[i], options.dedup)
        if duplicate is not None:
            decided[i] = ItemRow(
                int(image_id),
                "instance",
                rank,
                score,
                False,
                ItemReason.NEAR_DUPLICATE.value,
                duplicate_of=duplicate,
            )
            continue
        kept.add(int(image_id), cand[i])
        eligible.append(i)

    quota = len(eligible)
    if options.max_items is not None:
        quota = max(0, min(quota, options.max_items - len(seed_ids)))
    if options.mmr is None:
        chosen = set(eligible[:quota])
    else:
        chosen = set(_mmr(eligible, scores, cand, seed_mat, options.mmr, quota))
    for i in eligible:
        reason = ItemReason.NEIGHBOUR if i in chosen else ItemReason.OVER_MAX
        decided[i] = ItemRow(
            int(ids[i]), "instance", i + 1, float(scores[i]), i in chosen, reason.value
        )
    return rows + [decided[i] for i in range(len(ids))]


def _mmr(
    eligible: Sequence[int],
    scores: Sequence[float],
    vectors: Floats,
    seeds: Floats,
    lam: float,
    quota: int,
) -> list[int]:
    """Greedy maximal marginal relevance: ``quota`` picks out of ``eligible``."""
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


def select_class(
    ids: Sequence[int],
    scores: Sequence[float],
    vectors: npt.ArrayLike,
    instance_ids: Sequence[int],
    instance_vectors: npt.ArrayLike,
    *,
    count: int,
    dedup: float | None,
    start_rank: int = 1,
) -> list[ItemRow]:
    """Draw up to ``count`` class images from ``ids`` (best score first).

    ``instance_ids``/``instance_vectors`` are the included instance images: a candidate
    within ``dedup`` of one of them (or of a class image already drawn) is left out as a
    near-duplicate. Stops once ``count`` are drawn; returns every candidate looked at.
    """
    if count <= 0 or not len(ids):
        return []
    cand = unit_rows(vectors)
    inst = unit_rows(instance_vectors) if len(instance_ids) else np.zeros((0, 0), np.float32)
    kept = _Kept(instance_ids, inst)
    rows: list[ItemRow] = []
    drawn = 0
    for i, image_id in enumerate(ids):
        if drawn >= count:
            break
        rank = start_rank + i
        score = float(scores[i])
        duplicate = kept.duplicate_of(cand[i], dedup)
        if duplicate is not None:
            reason = ItemReason.NEAR_DUPLICATE.value
            rows.append(
                ItemRow(int(image_id), "class", rank, score, False, reason, duplicate_of=duplicate)
            )
            continue
        kept.add(int(image_id), cand[i])
        rows.append(ItemRow(int(image_id), "class", rank, score, True, ItemReason.CLASS.value))
        drawn += 1
    return rows
