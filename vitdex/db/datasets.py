"""Every SQL statement about DreamBooth datasets and their items.

A dataset keeps every candidate its curation looked at, included or not, each with the
reason (see :class:`~vitdex.db.models.DatasetItem`), so a set can be audited and edited by
hand. Functions take a :class:`~sqlalchemy.orm.Session` and leave committing to the caller.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from vitdex.db.models import INT64_MAX, Dataset, DatasetItem, Image, Space, is_id, iso, utcnow
from vitdex.db.rows import get_row
from vitdex.errors import ConfigError, ConflictError, NotFoundError

__all__ = [
    "CROP_MODES",
    "INT64_MAX",
    "ROLES",
    "WORD_MAX",
    "ItemReason",
    "ItemRow",
    "check_crop_mode",
    "check_name",
    "check_prompt",
    "check_word",
    "create_dataset",
    "dataset_to_dict",
    "default_captions",
    "delete_dataset",
    "find_dataset",
    "get_dataset",
    "included_items",
    "is_id",
    "item_counts",
    "item_to_dict",
    "list_datasets",
    "list_items",
    "record_export",
    "set_included",
    "set_items",
    "update_dataset",
]

#: An item is an instance image (the subject) or a class image (prior preservation).
ROLES = ("instance", "class")
#: How an export cuts photos: the subject's square, or aspect-ratio buckets.
CROP_MODES = ("square", "buckets")
#: Longest trigger or class word: a token or two, not a caption.
WORD_MAX = 64


class ItemReason(enum.StrEnum):
    """Why a candidate is in or out of its dataset."""

    SEED = "seed"  # one of the seed photos (in)
    NEIGHBOUR = "neighbour"  # a nearest neighbour of the seeds (in)
    BELOW_MIN_SCORE = "below_min_score"  # similarity under --min-score (out)
    NEAR_DUPLICATE = "near_duplicate"  # too close to a higher-ranked item (out)
    OVER_MAX = "over_max"  # eligible, but --max was reached (out)
    EXCLUDED_BY_HAND = "excluded_by_hand"  # out
    INCLUDED_BY_HAND = "included_by_hand"  # in
    CLASS = "class"  # a class (regularisation) image (in)
    DIVERSE = "diverse"  # a farthest-point pick of the diverse sampler (in)
    REPRESENTATIVE = "representative"  # nearest a k-means centre (in)
    NOT_SAMPLED = "not_sampled"  # eligible, but the sampler picked others (out)


@dataclass(frozen=True)
class ItemRow:
    """One candidate as curation decided it, before it is written."""

    image_id: int
    role: str
    rank: int
    score: float | None
    included: bool
    reason: str
    duplicate_of: int | None = None


# --------------------------------------------------------------------------- datasets


def check_name(session: Session, name: str) -> str:
    """``name`` stripped, if it can name a new dataset; else :class:`ConfigError` (not a
    usable name) or :class:`ConflictError` (taken)."""
    name = name.strip()
    if not name:
        raise ConfigError("a dataset needs a name")
    if len(name) > 256:
        raise ConfigError("a dataset name has at most 256 characters")
    if any(not ch.isprintable() for ch in name):
        raise ConfigError("a dataset name cannot hold control characters")
    if is_id(name):
        # Commands take NAME_OR_ID; an all-digit name would be read as an id.
        raise ConfigError(f"a dataset name cannot be a number ({name!r}); add a letter")
    if session.scalar(select(Dataset.id).where(Dataset.name == name)) is not None:
        raise ConflictError(
            f"a dataset named {name!r} already exists; pick another name or delete it first"
        )
    return name


def check_word(value: str | None, what: str) -> str | None:
    """A trigger or class word stripped (``None`` for none or blank), or :class:`ConfigError`.

    It goes into default captions and kohya folder names, so it must be one short line.
    """
    if value is None:
        return None
    word = value.strip()
    if not word:
        return None
    if len(word) > WORD_MAX:
        raise ConfigError(f"a {what} has at most {WORD_MAX} characters")
    if any(not ch.isprintable() for ch in word):
        raise ConfigError(f"a {what} is one line: no line breaks or control characters")
    return word


def check_crop_mode(value: str) -> str:
    """``value`` if it is a crop mode, else :class:`ConfigError`."""
    if value not in CROP_MODES:
        raise ConfigError(f"unknown crop mode {value!r} (one of: {', '.join(CROP_MODES)})")
    return value


def create_dataset(
    session: Session,
    *,
    name: str,
    prompt: str,
    class_prompt: str | None,
    space_id: int | None,
    params: Mapping[str, Any],
    trigger_word: str | None = None,
    class_word: str | None = None,
    crop_mode: str = "square",
) -> Dataset:
    """A new dataset row; :class:`ConflictError` when the name is taken."""
    name = check_name(session, name)
    dataset = Dataset(
        name=name,
        prompt=prompt,
        class_prompt=class_prompt,
        space_id=space_id,
        params=dict(params),
        trigger_word=check_word(trigger_word, "trigger word"),
        class_word=check_word(class_word, "class word"),
        crop_mode=check_crop_mode(crop_mode),
    )
    session.add(dataset)
    session.flush()
    return dataset


def get_dataset(session: Session, dataset_id: int) -> Dataset:
    """One dataset by id, or :class:`NotFoundError`."""
    return get_row(session, Dataset, dataset_id, "dataset")


def find_dataset(session: Session, name_or_id: str | int) -> Dataset:
    """A dataset by id (an int, or a string of digits) or by name, or :class:`NotFoundError`.

    Names cannot be all digits (see :func:`create_dataset`), so the two never clash.
    """
    if isinstance(name_or_id, int):
        return get_dataset(session, name_or_id)
    text = name_or_id.strip()
    if is_id(text):
        return get_dataset(session, int(text))
    found = session.scalar(select(Dataset).where(Dataset.name == text))
    if found is None:
        raise NotFoundError(f"no dataset named {text!r} (see `vitdex dataset list`)")
    return found


def list_datasets(
    session: Session, *, limit: int = 100, offset: int = 0
) -> tuple[list[Dataset], int]:
    """Datasets, newest first, with the total count."""
    total = int(session.scalar(select(func.count()).select_from(Dataset)) or 0)
    rows = session.scalars(
        select(Dataset).order_by(Dataset.id.desc()).limit(limit).offset(offset)
    ).all()
    return list(rows), total


def delete_dataset(session: Session, dataset_id: int) -> None:
    """Delete a dataset and its items (exported files stay where they are)."""
    get_dataset(session, dataset_id)
    # Explicit: SQLite only cascades with foreign keys switched on.
    session.execute(delete(DatasetItem).where(DatasetItem.dataset_id == dataset_id))
    session.execute(delete(Dataset).where(Dataset.id == dataset_id))


def update_dataset(session: Session, dataset_id: int, **changes: str | None) -> Dataset:
    """Change a dataset's ``prompt``, ``class_prompt``, ``trigger_word``, ``class_word`` or
    ``crop_mode`` (only the keys given; ``None`` clears all but prompt and crop mode); flushes.

    Values are checked here, so every edge refuses the same things.
    """
    dataset = get_dataset(session, dataset_id)
    unknown = set(changes) - {"prompt", "class_prompt", "trigger_word", "class_word", "crop_mode"}
    if unknown:
        raise ConfigError(f"cannot change {', '.join(sorted(unknown))} of a dataset")
    if "prompt" in changes:
        dataset.prompt = check_prompt(changes["prompt"], "prompt") or ""
        if not dataset.prompt:
            raise ConfigError("a dataset needs a prompt (or a trigger word to make one from)")
    if "class_prompt" in changes:
        dataset.class_prompt = check_prompt(changes["class_prompt"], "class prompt")
    if "trigger_word" in changes:
        dataset.trigger_word = check_word(changes["trigger_word"], "trigger word")
    if "class_word" in changes:
        dataset.class_word = check_word(changes["class_word"], "class word")
    if "crop_mode" in changes:
        dataset.crop_mode = check_crop_mode(changes["crop_mode"] or "")
    dataset.updated_at = utcnow()
    session.flush()
    return dataset


def check_prompt(value: str | None, what: str) -> str | None:
    """A prompt stripped (``None`` for none or blank), or :class:`ConfigError` (one line)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if len(value) > CAPTION_MAX:
        raise ConfigError(f"a {what} has at most {CAPTION_MAX} characters")
    if any(ch in value for ch in "\r\n\x00"):
        raise ConfigError(f"a {what} is one line: no line breaks or NUL characters")
    return value


def record_export(
    session: Session,
    dataset_id: int,
    path: str,
    prepared: Mapping[int, tuple[str, dict[str, Any]]],
) -> None:
    """Remember where a dataset was exported and each item's crop.

    ``prepared`` maps item ids to ``(caption, crop)``; items not in it keep what they had.
    The caption written is not stored: an item keeps the caption set by hand (or none), so
    a default caption follows later changes of the prompt or the trigger word.
    """
    dataset = get_dataset(session, dataset_id)
    dataset.export_path = path
    for item in session.scalars(select(DatasetItem).where(DatasetItem.dataset_id == dataset_id)):
        if item.id in prepared:
            item.crop = dict(prepared[item.id][1])
    session.flush()


# --------------------------------------------------------------------------- items


def set_items(session: Session, dataset_id: int, items: Sequence[ItemRow]) -> None:
    """Replace every item of a dataset."""
    session.execute(delete(DatasetItem).where(DatasetItem.dataset_id == dataset_id))
    if items:
        session.execute(
            insert(DatasetItem),
            [
                {
                    "dataset_id": dataset_id,
                    "image_id": row.image_id,
                    "role": row.role,
                    "rank": row.rank,
                    "score": row.score,
                    "included": row.included,
                    "reason": row.reason,
                    "duplicate_of": row.duplicate_of,
                }
                for row in items
            ],
        )


def list_items(
    session: Session,
    dataset_id: int,
    *,
    role: str | None = None,
    included: bool | None = None,
) -> list[tuple[DatasetItem, Image]]:
    """Items of a dataset with their images: instance before class, then by rank."""
    stmt = (
        select(DatasetItem, Image)
        .join(Image, Image.id == DatasetItem.image_id)
        .where(DatasetItem.dataset_id == dataset_id)
    )
    if role is not None:
        stmt = stmt.where(DatasetItem.role == role)
    if included is not None:
        stmt = stmt.where(DatasetItem.included == included)
    # "class" < "instance" alphabetically, hence the descending role.
    stmt = stmt.order_by(DatasetItem.role.desc(), DatasetItem.rank, DatasetItem.id)
    return [(item, image) for item, image in session.execute(stmt)]


def included_items(
    session: Session, dataset_id: int, role: str = "instance"
) -> list[tuple[DatasetItem, Image]]:
    """The included items of one role with their images (paths), in rank order.

    This is what a dataset *is*: the instance (or class) images training will see.
    """
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r} (one of: {', '.join(ROLES)})")
    return list_items(session, dataset_id, role=role, included=True)


def item_counts(session: Session, dataset_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """Per dataset: ``instance`` and ``class`` (included), ``excluded`` and ``candidates``."""
    counts = {i: {"instance": 0, "class": 0, "excluded": 0, "candidates": 0} for i in dataset_ids}
    if not dataset_ids:
        return counts
    stmt = (
        select(DatasetItem.dataset_id, DatasetItem.role, DatasetItem.included, func.count())
        .where(DatasetItem.dataset_id.in_(list(dataset_ids)))
        .group_by(DatasetItem.dataset_id, DatasetItem.role, DatasetItem.included)
    )
    for dataset_id, role, included, n in session.execute(stmt):
        row = counts[dataset_id]
        row["candidates"] += int(n)
        if included:
            row[role] = row.get(role, 0) + int(n)
        else:
            row["excluded"] += int(n)
    return counts


def set_included(
    session: Session,
    dataset_id: int,
    image_ids: Sequence[int],
    included: bool,
    *,
    role: str = "instance",
) -> list[DatasetItem]:
    """Include or exclude images by hand; returns the changed items.

    Every item of a listed image changes, whatever its role. Including an image that is no
    candidate yet adds it with ``role`` (after the last item of that role); excluding one
    that is no candidate is a :class:`NotFoundError`, as is an image id not in the catalog.
    """
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r} (one of: {', '.join(ROLES)})")
    if not image_ids:
        raise ConfigError("give at least one image id")
    dataset = get_dataset(session, dataset_id)
    wanted = list(dict.fromkeys(int(i) for i in image_ids))
    out_of_range = [i for i in wanted if not 1 <= i <= INT64_MAX]
    if out_of_range:
        raise NotFoundError(f"no image with id {out_of_range[0]}")
    existing = {
        image_id for (image_id,) in session.execute(select(Image.id).where(Image.id.in_(wanted)))
    }
    unknown = [i for i in wanted if i not in existing]
    if unknown:
        raise NotFoundError(f"no image with id {', '.join(map(str, unknown))}")
    items = list(
        session.scalars(
            select(DatasetItem).where(
                DatasetItem.dataset_id == dataset_id, DatasetItem.image_id.in_(wanted)
            )
        )
    )
    found = {item.image_id for item in items}
    missing = [i for i in wanted if i not in found]
    reason = ItemReason.INCLUDED_BY_HAND if included else ItemReason.EXCLUDED_BY_HAND
    if missing and not included:
        raise NotFoundError(
            f"image {', '.join(map(str, missing))} is not a candidate of dataset {dataset_id}"
        )
    for item in items:
        item.included = included
        item.reason = reason.value
    if missing:
        last = session.scalar(
            select(func.max(DatasetItem.rank)).where(
                DatasetItem.dataset_id == dataset_id, DatasetItem.role == role
            )
        )
        rank = (last or 0) + 1
        for image_id in missing:
            item = DatasetItem(
                dataset_id=dataset_id,
                image_id=image_id,
                role=role,
                rank=rank,
                score=None,
                included=True,
                reason=reason.value,
            )
            session.add(item)
            items.append(item)
            rank += 1
    dataset.updated_at = utcnow()
    session.flush()
    return items


#: Longest caption accepted (kohya reads one line of tokens; this is far past any prompt).
CAPTION_MAX = 2000


def set_caption(
    session: Session, dataset_id: int, image_id: int, caption: str | None, *, role: str
) -> tuple[DatasetItem, Image]:
    """Set (or, with ``None``, clear) the caption of one item by hand; flushes.

    The export writes this caption instead of the dataset's prompt, so one photo can name
    what the others do not show. A caption is one line: newlines are refused.
    """
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r} (one of: {', '.join(ROLES)})")
    if caption is not None:
        caption = caption.strip()
        if not caption:
            raise ConfigError("a caption may not be empty (send null to use the prompt)")
        if len(caption) > CAPTION_MAX:
            raise ConfigError(f"a caption has at most {CAPTION_MAX} characters")
        if any(ch in caption for ch in "\r\n\x00"):
            raise ConfigError("a caption is one line: no line breaks or NUL characters")
    dataset = get_dataset(session, dataset_id)
    found = session.execute(
        select(DatasetItem, Image)
        .join(Image, Image.id == DatasetItem.image_id)
        .where(
            DatasetItem.dataset_id == dataset_id,
            DatasetItem.image_id == image_id,
            DatasetItem.role == role,
        )
    ).first()
    if found is None:
        raise NotFoundError(f"image {image_id} is no {role} candidate of dataset {dataset_id}")
    item, image = found
    item.caption = caption
    dataset.updated_at = utcnow()
    session.flush()
    return item, image


# --------------------------------------------------------------------------- views


def default_captions(dataset: Dataset) -> dict[str, str | None]:
    """The caption of an item with none set by hand, per role: the (class) prompt."""
    return {"instance": dataset.prompt, "class": dataset.class_prompt}


def item_to_dict(
    item: DatasetItem, image: Image, defaults: Mapping[str, str | None] | None = None
) -> dict[str, Any]:
    """A JSON-ready view of an item with its image's path and size.

    ``caption`` is the effective one: the item's own (``caption_source`` ``item``) or its
    role's default from ``defaults`` (``default``; null when the role has none).
    """
    default = (defaults or {}).get(item.role)
    return {
        "image_id": item.image_id,
        "path": image.path,
        "width": image.width,
        "height": image.height,
        "role": item.role,
        "rank": item.rank,
        "score": None if item.score is None else round(float(item.score), 6),
        "included": bool(item.included),
        "reason": item.reason,
        "duplicate_of": item.duplicate_of,
        "caption": item.caption or default,
        "caption_source": "item" if item.caption else "default",
        "crop": item.crop,
    }


def dataset_to_dict(
    session: Session, dataset: Dataset, counts: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """A JSON-ready view of a dataset with its item counts (and space name)."""
    if counts is None:
        counts = item_counts(session, [dataset.id])[dataset.id]
    space = session.get(Space, dataset.space_id) if dataset.space_id is not None else None
    return {
        "id": dataset.id,
        "name": dataset.name,
        "prompt": dataset.prompt,
        "class_prompt": dataset.class_prompt,
        "trigger_word": dataset.trigger_word,
        "class_word": dataset.class_word,
        "crop_mode": dataset.crop_mode or "square",
        "space": space.name if space is not None else None,
        "params": dict(dataset.params or {}),
        "export_path": dataset.export_path,
        "counts": dict(counts),
        "created_at": iso(dataset.created_at),
        "updated_at": iso(dataset.updated_at),
    }
