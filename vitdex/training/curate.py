"""Curating DreamBooth datasets from search results.

A user names a few seed photos of the subject (catalog ids, or files); vitdex pulls their
nearest neighbours from one space of the index and decides, for every candidate, whether
it joins the instance set and why:

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
audited and edited (:func:`include_images`, :func:`exclude_images`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import Settings
from vitdex.db import datasets, repo
from vitdex.db.datasets import ItemReason, ItemRow
from vitdex.db.models import ImageStatus, Space
from vitdex.errors import ConfigError, ImageError, NotFoundError
from vitdex.vectors.store import SearchFilter, VectorStore

if TYPE_CHECKING:
    from vitdex.search.service import SearchService

__all__ = [
    "DEFAULT_CLASS_COUNT",
    "CurateOptions",
    "create_dataset",
    "delete_dataset",
    "exclude_images",
    "include_images",
    "list_datasets",
    "parse_seed",
    "select_class",
    "select_instances",
    "show_dataset",
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


# --------------------------------------------------------------------------- selection


def _unit(x: npt.ArrayLike) -> Floats:
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
    seed_mat = _unit(seed_vectors) if len(seed_ids) else np.zeros((0, 0), np.float32)
    cand = _unit(vectors) if len(ids) else np.zeros((0, 0), np.float32)
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
    cand = _unit(vectors)
    inst = _unit(instance_vectors) if len(instance_ids) else np.zeros((0, 0), np.float32)
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


# --------------------------------------------------------------------------- retrieval


def parse_seed(raw: str | int | Path) -> int | Path:
    """A seed as given on a command line: an existing file, else a catalog id."""
    if isinstance(raw, int):
        return raw
    path = Path(raw).expanduser()
    if path.is_file():
        return path.resolve()
    text = str(raw).strip()
    if datasets.is_id(text) and int(text) <= datasets.INT64_MAX:
        return int(text)
    raise NotFoundError(f"seed {str(raw)!r} is neither a file nor a catalog image id")


@dataclass
class _Seeds:
    """Query vectors, and which of them are catalog images (those become items)."""

    queries: list[Floats]
    item_ids: list[int]
    item_vectors: list[Floats]
    described: list[dict[str, Any]]


def _seed_vectors(
    settings: Settings,
    sessions: sessionmaker[Session],
    session: Session,
    space: Space,
    store: VectorStore,
    seeds: Sequence[int | Path],
    search: SearchService | None,
) -> _Seeds:
    out = _Seeds([], [], [], [])
    for seed in seeds:
        if isinstance(seed, int):
            if not 1 <= seed <= datasets.INT64_MAX:
                raise NotFoundError(f"no image with id {seed}")
            img = repo.get_image(session, seed)
            if img.status != ImageStatus.INDEXED or not repo.has_vector(session, seed, space.id):
                raise NotFoundError(
                    f"image {seed} has no vector in space {space.name!r} (status {img.status}"
                    f"{': ' + img.error if img.error else ''})"
                )
            vector = store.get(np.asarray([seed], np.int64))[0]
            out.described.append({"image_id": seed})
            image_id: int | None = seed
        else:
            try:
                data = Path(seed).read_bytes()
            except FileNotFoundError:
                raise NotFoundError(f"no such file: {seed}") from None
            except OSError as exc:
                raise ImageError(f"cannot read {seed}: {exc.strerror or exc}") from None
            if search is None:  # its model loads only if a file must be embedded
                from vitdex.search.service import SearchService

                search = SearchService(settings, sessions)
            image_id, vector = search.file_query(session, space, store, data)
            out.described.append({"file": str(seed), "image_id": image_id})
        unit = _unit(vector)[0]
        out.queries.append(unit)
        if image_id is not None and image_id not in out.item_ids:
            out.item_ids.append(image_id)
            out.item_vectors.append(unit)
    return out


def _search(
    session: Session,
    store: VectorStore,
    space: Space,
    queries: Floats,
    depth: int,
    label: str | None,
) -> list[int]:
    """Ids of the union of each query's ``depth`` nearest (optionally with ``label``)."""
    from vitdex.search.service import search_filtered

    depth = max(1, min(depth, store.count()))
    flt = None if label is None else SearchFilter(label=label)
    raw = search_filtered(session, space, store, queries, depth, flt)
    seen: dict[int, None] = {}
    for hits in raw:
        for hit in hits:
            seen.setdefault(int(hit.id), None)
    return list(seen)


def _ranked(
    session: Session, store: VectorStore, ids: Sequence[int], queries: Floats, skip: set[int]
) -> tuple[list[int], list[float], Floats]:
    """Indexed images among ``ids`` (not in ``skip``) by max cosine to the queries."""
    images = repo.get_images(session, [i for i in ids if i not in skip])
    usable = [i for i in ids if i in images and images[i].status == ImageStatus.INDEXED]
    if not usable:
        return [], [], np.zeros((0, queries.shape[1]), np.float32)
    vectors = _unit(store.get(np.asarray(usable, np.int64)))
    scores = (vectors @ queries.T).max(axis=1)
    # Ties broken by id, so a rebuild with the same parameters gives the same set.
    order = sorted(range(len(usable)), key=lambda j: (-float(scores[j]), usable[j]))
    return (
        [usable[j] for j in order],
        [float(scores[j]) for j in order],
        vectors[order],
    )


# --------------------------------------------------------------------------- services


def create_dataset(
    settings: Settings,
    sessions: sessionmaker[Session],
    name: str,
    seeds: Sequence[int | Path],
    *,
    prompt: str,
    class_prompt: str | None = None,
    options: CurateOptions | None = None,
    search: SearchService | None = None,
) -> dict[str, Any]:
    """Curate and store a dataset; returns ``{"dataset_id", "dataset", "items"}``.

    ``seeds`` are catalog image ids and image files (files are embedded with the search
    service's model unless the catalog holds the same content). ``search`` lends a loaded
    model (the API's); one is made on demand otherwise.
    """
    from vitdex.search.service import resolve_space
    from vitdex.vectors.factory import open_store

    options = options or CurateOptions()
    prompt = prompt.strip()
    class_prompt = class_prompt.strip() if class_prompt else None
    if not prompt:
        raise ConfigError('a dataset needs a prompt, e.g. --prompt "a photo of sks dog"')
    if not seeds:
        raise ConfigError("give at least one seed (a catalog image id or an image file)")
    options.check(has_class_prompt=class_prompt is not None)
    class_count = options.resolved_class_count(class_prompt is not None)

    with sessions() as session:
        # Fail on a taken name before any work (create_dataset checks again at insert).
        datasets.check_name(session, name)
        space = resolve_space(session, settings.model.spaces[0], options.space)
        store = open_store(settings, space.name, space.dim, space.metric)
        try:
            if store.count() == 0:
                raise NotFoundError(f"space {space.name!r} holds no vectors yet")
            found = _seed_vectors(settings, sessions, session, space, store, seeds, search)
            queries = np.stack(found.queries)
            n_seeds = len(found.item_ids)
            class_depth = 3 * class_count + 20 if class_count else 0
            depth = options.k + n_seeds + (class_depth if options.class_label is None else 0)
            pool = _search(session, store, space, queries, depth, None)
            ids, scores, vectors = _ranked(session, store, pool, queries, set(found.item_ids))
            k = options.k
            rows = select_instances(
                found.item_ids,
                np.stack(found.item_vectors) if found.item_vectors else [],
                ids[:k],
                scores[:k],
                vectors[:k],
                options,
            )
            if class_count:
                instance = {r.image_id for r in rows}
                included = [r.image_id for r in rows if r.included]
                if options.class_label is None:
                    cids, cscores, cvecs = ids[k:], scores[k:], vectors[k:]
                else:
                    labelled = _search(
                        session,
                        store,
                        space,
                        queries,
                        options.k + n_seeds + class_depth,
                        options.class_label,
                    )
                    cids, cscores, cvecs = _ranked(session, store, labelled, queries, instance)
                by_id = {image_id: vectors[j] for j, image_id in enumerate(ids)}
                by_id.update(zip(found.item_ids, found.item_vectors, strict=True))
                rows += select_class(
                    cids,
                    cscores,
                    cvecs,
                    included,
                    np.stack([by_id[i] for i in included]) if included else [],
                    count=class_count,
                    dedup=options.dedup,
                    start_rank=k + 1,
                )
        finally:
            store.close()

        params = {
            "seeds": found.described,
            "k": options.k,
            "min_score": options.min_score,
            "dedup": options.dedup,
            "max": options.max_items,
            "mmr": options.mmr,
            "space": space.name,
            "score": "max",
            "class_count": class_count,
            "class_label": options.class_label,
        }
        dataset = datasets.create_dataset(
            session,
            name=name,
            prompt=prompt,
            class_prompt=class_prompt,
            space_id=space.id,
            params=params,
        )
        datasets.set_items(session, dataset.id, rows)
        session.commit()
        return _view(session, dataset.id)


def _view(session: Session, dataset_id: int, role: str | None = None) -> dict[str, Any]:
    dataset = datasets.get_dataset(session, dataset_id)
    items = datasets.list_items(session, dataset_id, role=role)
    return {
        "dataset_id": dataset.id,
        "dataset": datasets.dataset_to_dict(session, dataset),
        "items": [datasets.item_to_dict(item, image) for item, image in items],
    }


def show_dataset(
    sessions: sessionmaker[Session], name_or_id: str | int, *, role: str | None = None
) -> dict[str, Any]:
    """A dataset with every item and its reason: ``{"dataset_id", "dataset", "items"}``."""
    if role is not None and role not in datasets.ROLES:
        raise ConfigError(f"unknown role {role!r} (one of: {', '.join(datasets.ROLES)})")
    with sessions() as session:
        dataset = datasets.find_dataset(session, name_or_id)
        return _view(session, dataset.id, role)


def list_datasets(
    sessions: sessionmaker[Session], *, limit: int = 100, offset: int = 0
) -> dict[str, Any]:
    """Datasets, newest first: ``{"total", "datasets": [...]}`` with item counts."""
    with sessions() as session:
        rows, total = datasets.list_datasets(session, limit=limit, offset=offset)
        counts = datasets.item_counts(session, [d.id for d in rows])
        return {
            "total": total,
            "datasets": [datasets.dataset_to_dict(session, d, counts[d.id]) for d in rows],
        }


def _set_included(
    sessions: sessionmaker[Session],
    name_or_id: str | int,
    image_ids: Sequence[int],
    included: bool,
    role: str,
) -> dict[str, Any]:
    with sessions() as session:
        dataset = datasets.find_dataset(session, name_or_id)
        changed = datasets.set_included(session, dataset.id, image_ids, included, role=role)
        session.commit()
        ids = {item.image_id for item in changed}
        view = _view(session, dataset.id)
        view["changed"] = [item for item in view["items"] if item["image_id"] in ids]
        return view


def include_images(
    sessions: sessionmaker[Session],
    name_or_id: str | int,
    image_ids: Sequence[int],
    *,
    role: str = "instance",
) -> dict[str, Any]:
    """Include images by hand (reason ``included_by_hand``); a new image joins as ``role``.

    Returns the dataset view with ``changed`` listing the items touched.
    """
    return _set_included(sessions, name_or_id, image_ids, True, role)


def exclude_images(
    sessions: sessionmaker[Session], name_or_id: str | int, image_ids: Sequence[int]
) -> dict[str, Any]:
    """Exclude candidates by hand (reason ``excluded_by_hand``); the view with ``changed``."""
    return _set_included(sessions, name_or_id, image_ids, False, "instance")


def delete_dataset(sessions: sessionmaker[Session], name_or_id: str | int) -> dict[str, Any]:
    """Delete a dataset and its items; exported files are left where they are."""
    with sessions() as session:
        dataset = datasets.find_dataset(session, name_or_id)
        out = {"id": dataset.id, "name": dataset.name, "export_path": dataset.export_path}
        datasets.delete_dataset(session, dataset.id)
        session.commit()
    return {**out, "deleted": True}
