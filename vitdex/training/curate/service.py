"""Curating a DreamBooth dataset from the index, and the dataset services.

:func:`create_dataset` embeds or looks up the seeds, pulls their nearest neighbours from
one space of the index, ranks them by cosine to the closest seed and lets
:mod:`.selection` decide each candidate; the dataset and every candidate looked at, with
its reason, are stored in the catalog. The other services show, list, edit by hand
(:func:`include_images`, :func:`exclude_images`) and delete datasets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import Settings
from vitdex.db import datasets, facets, repo
from vitdex.db.models import ImageStatus, Space
from vitdex.errors import ConfigError, ImageError, NotFoundError
from vitdex.filters import SearchFilter
from vitdex.training.curate.edits import bucket_histogram, check_bucket_resolution, resolve_prompts
from vitdex.training.curate.selection import (
    CurateOptions,
    Floats,
    choose_instances,
    select_class,
    unit_rows,
)
from vitdex.vectors.store import VectorStore

if TYPE_CHECKING:
    from vitdex.search.service import SearchService

__all__ = [
    "create_dataset",
    "delete_dataset",
    "exclude_images",
    "include_images",
    "list_datasets",
    "parse_seed",
    "show_dataset",
]


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
        unit = unit_rows(vector)[0]
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
    flt: SearchFilter | None,
) -> list[int]:
    """Ids of the union of each query's ``depth`` nearest (among those ``flt`` allows)."""
    from vitdex.search.service import search_filtered

    depth = max(1, min(depth, store.count()))
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
    vectors = unit_rows(store.get(np.asarray(usable, np.int64)))
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
    prompt: str | None,
    class_prompt: str | None = None,
    options: CurateOptions | None = None,
    search: SearchService | None = None,
    trigger_word: str | None = None,
    class_word: str | None = None,
    crop_mode: str = "square",
) -> dict[str, Any]:
    """Curate and store a dataset; returns ``{"dataset_id", "dataset", "items"}``.

    With a trigger word the prompt may be left out ("a photo of TRIGGER CLASS"), and with
    a class word the class prompt ("a photo of a CLASS", which draws class images).

    ``seeds`` are catalog image ids and image files (files are embedded with the search
    service's model unless the catalog holds the same content). ``search`` lends a loaded
    model (the API's); one is made on demand otherwise. The options' tags restrict the
    instance candidates (seeds stay whatever they carry); hidden duplicates are left out
    of the instance and the class candidates.
    """
    from vitdex.search.spaces import resolve_space
    from vitdex.vectors.factory import open_store

    options = options or CurateOptions()
    prompt, class_prompt = resolve_prompts(prompt, class_prompt, trigger_word, class_word)
    datasets.check_crop_mode(crop_mode)
    if not seeds:
        raise ConfigError("give at least one seed (a catalog image id or an image file)")
    options.check(has_class_prompt=class_prompt is not None)
    class_count = options.resolved_class_count(class_prompt is not None)

    with sessions() as session:
        # Fail on a taken name before any work (create_dataset checks again at insert).
        datasets.check_name(session, name)
        if options.class_label is not None and class_count:
            # A label no photo has would leave the class set quietly empty.
            for miss in facets.filter_misses(session, SearchFilter(label=options.class_label)):
                raise ConfigError(f"--class-label: {miss.message}")
        if options.tags:
            # A tag no photo has would leave only the seeds, with no word on why.
            for miss in facets.filter_misses(session, SearchFilter(tags=options.tags)):
                raise ConfigError(f"--tag: {miss.message}")
        if options.head_labels:
            # An unknown head or label would leave only the seeds, as a tag would.
            flt = SearchFilter(head_labels=options.head_labels)
            for miss in facets.filter_misses(session, flt):
                raise ConfigError(f"--head-label: {miss.message}")
        space = resolve_space(session, settings.model.spaces[0], options.space)
        store = open_store(settings, space.name, space.dim, space.metric)
        try:
            if store.count() == 0:
                raise NotFoundError(f"space {space.name!r} holds no vectors yet")
            found = _seed_vectors(settings, sessions, session, space, store, seeds, search)
            queries = np.stack(found.queries)
            n_seeds = len(found.item_ids)
            class_depth = 3 * class_count + 20 if class_count else 0
            wanted, class_flt = options.candidate_filter(), options.class_filter()
            # One search serves both when the class images may come from the same photos.
            shared = wanted == class_flt
            depth = options.k + n_seeds + (class_depth if shared else 0)
            pool = _search(session, store, space, queries, depth, wanted)
            ids, scores, vectors = _ranked(session, store, pool, queries, set(found.item_ids))
            k = options.k
            chosen = choose_instances(
                found.item_ids,
                np.stack(found.item_vectors) if found.item_vectors else [],
                ids[:k],
                scores[:k],
                vectors[:k],
                options,
            )
            rows = chosen.rows
            if class_count:
                instance = {r.image_id for r in rows}
                included = [r.image_id for r in rows if r.included]
                if shared:
                    cids, cscores, cvecs = ids[k:], scores[k:], vectors[k:]
                else:
                    others = _search(
                        session, store, space, queries, k + n_seeds + class_depth, class_flt
                    )
                    cids, cscores, cvecs = _ranked(session, store, others, queries, instance)
                by_id = {image_id: vectors[j] for j, image_id in enumerate(ids)}
                by_id.update(zip(found.item_ids, found.item_vectors, strict=True))
                rows += select_class(
                    cids,
                    cscores,
                    cvecs,
                    included,
                    np.stack([by_id[i] for i in included]) if included else [],
                    count=class_count,
                    dedup=options.near_duplicate_at,
                    start_rank=k + 1,
                )
        finally:
            store.close()

        dedup = options.near_duplicate_at
        params: dict[str, Any] = {
            "seeds": found.described,
            "k": options.k,
            "min_score": options.min_score,
            # Both spellings of the one rule, rounded so 1 − 0.95 reads 0.05.
            "dedup": None if dedup is None else round(dedup, 9),
            "min_distance": None if dedup is None else round(1.0 - dedup, 9),
            "max": options.max_items,
            "mmr": options.mmr,
            "sampler": options.sampler,
            "space": space.name,
            "score": "max",
            "class_count": class_count,
            "class_label": options.class_label,
            "tags": list(dict.fromkeys(t.strip() for t in options.tags)),
            "hide_duplicates": options.hide_duplicates,
            "head_labels": list(dict.fromkeys(options.head_labels)),
        }
        if options.sampler == "representative":
            # The cluster number is the position: largest first.
            params["clusters"] = [
                {"image_id": c.pick, "size": len(c.members), "members": list(c.members)}
                for c in chosen.clusters
            ]
        dataset = datasets.create_dataset(
            session,
            name=name,
            prompt=prompt,
            class_prompt=class_prompt,
            space_id=space.id,
            params=params,
            trigger_word=trigger_word,
            class_word=class_word,
            crop_mode=crop_mode,
        )
        datasets.set_items(session, dataset.id, rows)
        session.commit()
        return _view(session, dataset.id)


def _view(
    session: Session, dataset_id: int, role: str | None = None, resolution: int = 512
) -> dict[str, Any]:
    dataset = datasets.get_dataset(session, dataset_id)
    defaults = datasets.default_captions(dataset)
    items = datasets.list_items(session, dataset_id)
    return {
        "dataset_id": dataset.id,
        "dataset": datasets.dataset_to_dict(session, dataset),
        "items": [
            datasets.item_to_dict(item, image, defaults)
            for item, image in items
            if role is None or item.role == role
        ],
        "buckets": bucket_histogram(items, resolution),
    }


def show_dataset(
    sessions: sessionmaker[Session],
    name_or_id: str | int,
    *,
    role: str | None = None,
    resolution: int = 512,
) -> dict[str, Any]:
    """A dataset with every item and its reason: ``{"dataset_id", "dataset", "items",
    "buckets"}``; ``buckets`` is the bucket histogram of the included instance images at
    base ``resolution``."""
    if role is not None and role not in datasets.ROLES:
        raise ConfigError(f"unknown role {role!r} (one of: {', '.join(datasets.ROLES)})")
    check_bucket_resolution(resolution)
    with sessions() as session:
        dataset = datasets.find_dataset(session, name_or_id)
        return _view(session, dataset.id, role, resolution)


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


def set_caption(
    sessions: sessionmaker[Session],
    name_or_id: str | int,
    image_id: int,
    caption: str | None,
    *,
    role: str = "instance",
) -> dict[str, Any]:
    """Set one item's caption by hand (``None``: back to the dataset's prompt); the item.

    The next export writes it as that photo's caption file.
    """
    with sessions() as session:
        dataset = datasets.find_dataset(session, name_or_id)
        item, image = datasets.set_caption(session, dataset.id, image_id, caption, role=role)
        session.commit()
        return datasets.item_to_dict(item, image, datasets.default_captions(dataset))


def delete_dataset(sessions: sessionmaker[Session], name_or_id: str | int) -> dict[str, Any]:
    """Delete a dataset and its items; exported files are left where they are."""
    with sessions() as session:
        dataset = datasets.find_dataset(session, name_or_id)
        out = {"id": dataset.id, "name": dataset.name, "export_path": dataset.export_path}
        datasets.delete_dataset(session, dataset.id)
        session.commit()
    return {**out, "deleted": True}
