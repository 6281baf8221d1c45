"""Which candidates join a DreamBooth dataset, and why: the selection rules.

- **score**: a candidate's cosine similarity to its *closest* seed (the maximum over the
  seeds). Seeds show the subject from different sides; a photo that matches any one of
  them well is a photo of the subject, while the mean would favour the average view and
  punish poses only one seed covers. The ``k`` best-scoring images (seeds left out) are
  the candidates, ranked 1..k by score.
- **seeds** that are catalog images are in, with reason ``seed``. A seed file that is not
  in the catalog steers the search but cannot be an item (index its folder to add it).
- **minimum distance**: no two included photos are closer than ``min_distance`` (cosine
  distance, 1 − cosine); ``dedup`` says the same as a cosine (``dedup`` = 1 −
  ``min_distance``): a pair at cosine ``dedup`` or above is a near-duplicate. Checked in
  rank order against everything kept so far (seeds first, then better-ranked
  candidates): the later one is out (``near_duplicate``, ``duplicate_of`` names the kept
  one). A seed too close to an earlier seed is out the same way (it still steers the
  search).
- in rank order, a candidate scoring under ``min_score`` is out (``below_min_score``);
- the eligible rest (in, or out only for the cap) are chosen by the **sampler** until
  ``max_items`` instance images (seeds included) are reached (see :mod:`.samplers`):

  - ``nearest`` (default): by score (``neighbour``; the rest ``over_max``) or, with
    ``mmr`` = λ, by maximal marginal relevance: each next pick maximises
    ``λ·score − (1−λ)·(highest cosine to anything picked so far)``;
  - ``diverse``: farthest-point sampling (``diverse``; the rest ``not_sampled``);
  - ``representative``: k-means with k = the picks left after the seeds, the candidate
    nearest each centre (``representative``; the rest ``not_sampled``). A cluster
    k-means leaves empty is made up for by a farthest-point pick (``diverse``).

  Both of the last two need ``max_items``: they choose *how many* to spread over.

**Class images** (prior preservation) come from the same index: the neighbours ranked
after the ``k`` instance candidates, i.e. the same kind of subject, further away. With
``class_label`` only images with that predicted label (in their top labels) are drawn.
A class candidate within the minimum distance of an included instance image is the
subject itself (out, ``near_duplicate``), as is one within it of a class image already
drawn; the others are in (``class``) until ``class_count`` are found (fewer when the
index runs out). Every candidate looked at stays in the dataset with its reason, so a
set can be audited and edited by hand (:mod:`.service`).

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
from vitdex.filters import SearchFilter, split_head_label, tag_key
from vitdex.training.curate.samplers import (
    SAMPLERS,
    Cluster,
    farthest_point,
    kmeans_representatives,
    mmr,
)

__all__ = [
    "DEFAULT_CLASS_COUNT",
    "DEFAULT_DEDUP",
    "SAMPLERS",
    "CurateOptions",
    "Floats",
    "InstanceSelection",
    "choose_instances",
    "select_class",
    "select_instances",
    "unit_rows",
]

Floats = npt.NDArray[np.float32]

#: Class images drawn when a class prompt is given and no count is.
DEFAULT_CLASS_COUNT = 100
#: Cosine at or above which two photos are near-duplicates unless told otherwise.
DEFAULT_DEDUP = 0.95
_MAX_K = 10_000
# dedup and min_distance agree when they differ by float rounding only.
_AGREE = 1e-9


@dataclass(frozen=True)
class CurateOptions:
    """How candidates are drawn and judged (stored with the dataset as its ``params``)."""

    #: Nearest neighbours of the seeds considered as instance candidates.
    k: int = 40
    #: Candidates scoring under this cosine similarity are left out.
    min_score: float | None = None
    #: Cosine similarity at or above which a candidate is a near-duplicate; None: off.
    dedup: float | None = DEFAULT_DEDUP
    #: No two included photos closer than this cosine distance (1 − cosine): the same
    #: rule as ``dedup``, as a distance. Given, it decides; a ``dedup`` other than the
    #: default must then agree with it.
    min_distance: float | None = None
    #: At most this many instance images, seeds included; None: no cap.
    max_items: int | None = None
    #: λ of maximal marginal relevance (1 = by score only, 0 = diversity only); None: off.
    mmr: float | None = None
    #: How the capped set is picked among the eligible candidates (see :data:`SAMPLERS`).
    sampler: str = "nearest"
    #: Space to search (default: the first configured one).
    space: str | None = None
    #: Class images to draw; None: DEFAULT_CLASS_COUNT with a class prompt, else 0.
    class_count: int | None = None
    #: Only draw class images with this predicted label.
    class_label: str | None = None
    #: Instance candidates must carry every one of these tags.
    tags: tuple[str, ...] = ()
    #: Leave photos marked as duplicates (in review) out of every candidate search.
    hide_duplicates: bool = False
    #: Instance candidates must carry every one of these head labels (``HEAD:LABEL``).
    head_labels: tuple[str, ...] = ()

    def check(self, *, has_class_prompt: bool) -> None:
        """Raise :class:`ConfigError` for values out of range or contradicting each other."""
        if not 1 <= self.k <= _MAX_K:
            raise ConfigError(f"k must lie between 1 and {_MAX_K}, not {self.k}")
        if self.min_score is not None and not -1.0 <= self.min_score <= 1.0:
            raise ConfigError(f"min-score is a cosine similarity in [-1, 1], not {self.min_score}")
        if self.dedup is not None and not 0.0 < self.dedup <= 1.0:
            raise ConfigError(f"dedup is a cosine similarity in (0, 1], not {self.dedup}")
        self._check_min_distance()
        if self.max_items is not None and self.max_items < 1:
            raise ConfigError(f"max must be at least 1, not {self.max_items}")
        if self.mmr is not None and not 0.0 <= self.mmr <= 1.0:
            raise ConfigError(f"the MMR lambda lies in [0, 1], not {self.mmr}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r} (one of: {', '.join(SAMPLERS)})")
        if self.sampler != "nearest":
            if self.max_items is None:
                raise ConfigError(
                    f"the {self.sampler} sampler spreads a fixed number of photos: give max "
                    "(at most N instance images, seeds included), e.g. --max 20"
                )
            if self.mmr is not None:
                raise ConfigError(
                    f"mmr re-ranks the nearest sampler; the {self.sampler} sampler takes no mmr"
                )
        if any(not tag_key(t) for t in self.tags):
            raise ConfigError("a tag filter cannot be empty")
        if any(not ch.isprintable() for t in self.tags for ch in t):
            # No tag holds one, and PostgreSQL refuses NUL in a query.
            raise ConfigError("a tag filter cannot hold control characters")
        for value in self.head_labels:
            try:
                split_head_label(value)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if self.class_count is not None and not 0 <= self.class_count <= _MAX_K:
            raise ConfigError(f"class-count must lie between 0 and {_MAX_K}")
        if not has_class_prompt and (self.class_count or self.class_label):
            raise ConfigError(
                "class images need a class prompt (e.g. --class-prompt 'a photo of a dog')"
            )

    def _check_min_distance(self) -> None:
        d = self.min_distance
        if d is None:
            return
        if not 0.0 <= d < 1.0:
            raise ConfigError(f"min-distance is a cosine distance in [0, 1), not {d}")
        if self.dedup is None:
            raise ConfigError(
                f"min-distance {d} keeps photos apart, while dedup off keeps near-duplicates:"
                " give one of them"
            )
        if self.dedup != DEFAULT_DEDUP and abs(self.dedup - (1.0 - d)) > _AGREE:
            raise ConfigError(
                f"dedup {self.dedup} and min-distance {d} contradict each other (dedup is "
                f"1 − min-distance, here {1.0 - d:g}): give one of them"
            )

    @property
    def near_duplicate_at(self) -> float | None:
        """The cosine at or above which two photos are near-duplicates (None: off)."""
        if self.min_distance is not None:
            return 1.0 - self.min_distance
        return self.dedup

    def candidate_filter(self) -> SearchFilter | None:
        """What the instance candidates are restricted to (None: the whole space)."""
        flt = SearchFilter(
            tags=tuple(dict.fromkeys(t.strip() for t in self.tags)),
            hide_duplicates=self.hide_duplicates,
            head_labels=tuple(
                dict.fromkeys(":".join(split_head_label(v)) for v in self.head_labels)
            ),
        )
        return None if flt.is_empty() else flt

    def class_filter(self) -> SearchFilter | None:
        """What class candidates are restricted to: the class label, and no photo marked
        as a duplicate when those are hidden. The tags and head labels are not applied:
        they pick out the subject, and class images are other instances of its class."""
        flt = SearchFilter(label=self.class_label, hide_duplicates=self.hide_duplicates)
        return None if flt.is_empty() else flt

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


@dataclass(frozen=True)
class InstanceSelection:
    """The decided instance candidates, and how the representative sampler grouped them."""

    #: The seeds (rank 0), then every candidate (rank 1..) with its reason.
    rows: list[ItemRow]
    #: For the representative sampler: each cluster's pick and members as image ids,
    #: largest first (the cluster number is the position); empty for the others.
    clusters: list[Cluster]


def select_instances(
    seed_ids: Sequence[int],
    seed_vectors: npt.ArrayLike,
    ids: Sequence[int],
    scores: Sequence[float],
    vectors: npt.ArrayLike,
    options: CurateOptions,
) -> list[ItemRow]:
    """Decide every instance candidate: the rows of :func:`choose_instances`."""
    return choose_instances(seed_ids, seed_vectors, ids, scores, vectors, options).rows


def choose_instances(
    seed_ids: Sequence[int],
    seed_vectors: npt.ArrayLike,
    ids: Sequence[int],
    scores: Sequence[float],
    vectors: npt.ArrayLike,
    options: CurateOptions,
) -> InstanceSelection:
    """Decide every instance candidate (see the module docstring for the rules).

    ``seed_ids``/``seed_vectors`` are the seeds that are catalog images; ``ids``,
    ``scores`` and ``vectors`` the candidates, best score first.
    """
    seed_mat = unit_rows(seed_vectors) if len(seed_ids) else np.zeros((0, 0), np.float32)
    cand = unit_rows(vectors) if len(ids) else np.zeros((0, 0), np.float32)
    dedup = options.near_duplicate_at
    rows: list[ItemRow] = []
    kept = _Kept([], seed_mat)
    for j, seed in enumerate(seed_ids):
        duplicate = kept.duplicate_of(seed_mat[j], dedup)
        if duplicate is None:
            kept.add(int(seed), seed_mat[j])
            rows.append(ItemRow(int(seed), "instance", 0, None, True, ItemReason.SEED.value))
        else:
            reason = ItemReason.NEAR_DUPLICATE.value
            rows.append(
                ItemRow(int(seed), "instance", 0, None, False, reason, duplicate_of=duplicate)
            )
    n_seeds = len(kept.ids)
    kept_seeds = seed_mat[[j for j, r in enumerate(rows) if r.included]] if n_seeds else seed_mat
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
        duplicate = kept.duplicate_of(cand[i], dedup)
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
        quota = max(0, min(quota, options.max_items - n_seeds))
    picks, clusters = _sample(eligible, scores, cand, kept_seeds, quota, options)
    left_out = ItemReason.OVER_MAX if options.sampler == "nearest" else ItemReason.NOT_SAMPLED
    for i in eligible:
        reason = picks.get(i, left_out)
        decided[i] = ItemRow(
            int(ids[i]), "instance", i + 1, float(scores[i]), i in picks, reason.value
        )
    groups = [Cluster(int(ids[c.pick]), tuple(int(ids[m]) for m in c.members)) for c in clusters]
    return InstanceSelection(rows + [decided[i] for i in range(len(ids))], groups)


def _sample(
    eligible: list[int],
    scores: Sequence[float],
    cand: Floats,
    seeds: Floats,
    quota: int,
    options: CurateOptions,
) -> tuple[dict[int, ItemReason], list[Cluster]]:
    """The sampler's picks among ``eligible`` (candidate index → reason), and clusters."""
    if options.sampler == "diverse":
        chosen = farthest_point(eligible, cand, seeds, quota)
        return dict.fromkeys(chosen, ItemReason.DIVERSE), []
    if options.sampler == "representative":
        clusters = kmeans_representatives(eligible, cand, quota)
        picks = dict.fromkeys((c.pick for c in clusters), ItemReason.REPRESENTATIVE)
        if len(picks) < quota:
            # k-means left a cluster empty: spread the picks still owed from the set so far.
            rest = [i for i in eligible if i not in picks]
            taken = np.concatenate([seeds.reshape(-1, cand.shape[1]), cand[list(picks)]])
            for i in farthest_point(rest, cand, taken, quota - len(picks)):
                picks[i] = ItemReason.DIVERSE
        return picks, clusters
    if options.mmr is None:
        return dict.fromkeys(eligible[:quota], ItemReason.NEIGHBOUR), []
    chosen = mmr(eligible, scores, cand, seeds, options.mmr, quota)
    return dict.fromkeys(chosen, ItemReason.NEIGHBOUR), []


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
