"""Editing a dataset after curation: its words and crop mode, captions, bucket histogram.

Every function here is a service the API, the CLI and the pages call alike; the rules
(what a default caption is, how a find/replace applies) live in
:mod:`vitdex.training.captions` and :mod:`vitdex.db.datasets`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from vitdex.db import datasets
from vitdex.db.models import Dataset, DatasetItem, Image, utcnow
from vitdex.errors import ConfigError
from vitdex.training.captions import default_caption, default_class_prompt, replacer

__all__ = [
    "BUCKET_RESOLUTIONS",
    "EXAMPLES_MAX",
    "bucket_histogram",
    "check_bucket_resolution",
    "list_captions",
    "replace_captions",
    "resolve_prompts",
    "update_dataset",
]

#: Base resolutions the histogram may be asked for (inclusive).
BUCKET_RESOLUTIONS = (256, 2048)
#: Changed captions a find/replace shows (it counts them all).
EXAMPLES_MAX = 20


def resolve_prompts(
    prompt: str | None,
    class_prompt: str | None,
    trigger_word: str | None,
    class_word: str | None,
) -> tuple[str, str | None]:
    """The (prompt, class prompt) a dataset gets from what was given.

    A prompt may be left out when there is a trigger word: it becomes "a photo of TRIGGER
    CLASS"; a class prompt left out becomes "a photo of a CLASS" when there is a class word.
    """
    trigger = datasets.check_word(trigger_word, "trigger word")
    klass = datasets.check_word(class_word, "class word")
    text = datasets.check_prompt(prompt, "prompt")
    if text is None:
        if trigger is None:
            raise ConfigError(
                'a dataset needs a prompt (e.g. --prompt "a photo of sks dog") '
                "or a trigger word to make one from (--trigger-word sks)"
            )
        text = default_caption(trigger, klass, "")
    given = datasets.check_prompt(class_prompt, "class prompt")
    return text, given if given is not None else default_class_prompt(klass)


def update_dataset(
    sessions: sessionmaker[Session],
    name_or_id: str | int,
    *,
    prompt: str | None = None,
    class_prompt: str | None = None,
    trigger_word: str | None = None,
    class_word: str | None = None,
    crop_mode: str | None = None,
) -> dict[str, Any]:
    """Change a dataset's words, prompts or crop mode; ``None`` leaves a field as it is.

    An empty string clears the trigger word, class word or class prompt. A prompt (or
    class prompt) that was the default of the old words follows new words unless a new
    one is given too, so ``--trigger-word ohwx`` alone renames the subject everywhere.
    Returns the dataset as JSON.
    """
    with sessions() as session:
        row = datasets.find_dataset(session, name_or_id)
        changes: dict[str, str | None] = {}
        if trigger_word is not None:
            changes["trigger_word"] = trigger_word
        if class_word is not None:
            changes["class_word"] = class_word
        if crop_mode is not None:
            changes["crop_mode"] = crop_mode
        if class_prompt is not None:
            changes["class_prompt"] = class_prompt
        if prompt is not None:
            changes["prompt"] = prompt
        if not changes:
            raise ConfigError(
                "nothing to change: give a trigger word, class word, crop mode or prompt"
            )
        old_prompt = _derived_prompt(row)
        old_class_prompt = default_class_prompt(row.class_word)
        datasets.update_dataset(session, row.id, **changes)
        if prompt is None and row.trigger_word and row.prompt == old_prompt:
            datasets.update_dataset(
                session, row.id, prompt=default_caption(row.trigger_word, row.class_word, "")
            )
        # Clearing a word keeps what was made from it: a dataset is never left uncaptioned.
        follows = row.class_prompt == old_class_prompt and old_class_prompt is not None
        if class_prompt is None and row.class_word and follows:
            datasets.update_dataset(
                session, row.id, class_prompt=default_class_prompt(row.class_word)
            )
        session.commit()
        return datasets.dataset_to_dict(session, row)


def _derived_prompt(row: Dataset) -> str | None:
    return default_caption(row.trigger_word, row.class_word, "") if row.trigger_word else None


def _check_role(role: str | None) -> None:
    if role is not None and role not in datasets.ROLES:
        raise ConfigError(f"unknown role {role!r} (one of: {', '.join(datasets.ROLES)})")


def _caption_row(item: DatasetItem, image: Image, default: str | None) -> dict[str, Any]:
    return {
        "image_id": item.image_id,
        "role": item.role,
        "included": bool(item.included),
        "path": image.path,
        "caption": item.caption or default,
        "caption_source": "item" if item.caption else "default",
    }


def list_captions(
    sessions: sessionmaker[Session], name_or_id: str | int, *, role: str | None = None
) -> dict[str, Any]:
    """Every item's effective caption and where it comes from (``item`` or ``default``)."""
    _check_role(role)
    with sessions() as session:
        row = datasets.find_dataset(session, name_or_id)
        defaults = datasets.default_captions(row)
        items = datasets.list_items(session, row.id, role=role)
        return {
            "dataset_id": row.id,
            "defaults": defaults,
            "captions": [_caption_row(i, img, defaults[i.role]) for i, img in items],
        }


def replace_captions(
    sessions: sessionmaker[Session],
    name_or_id: str | int,
    find: str,
    replace: str,
    *,
    regex: bool = False,
    role: str | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Find and replace in the effective captions of a dataset's items (of ``role``).

    A result equal to the item's default caption leaves (or puts) the item without a
    caption of its own, so it keeps following the prompt. Nothing is written with
    ``dry_run``, or when any result would be refused (empty, too long): all or nothing.
    Returns ``{"changed", "scanned", "dry_run", "examples": [{image_id, role, before,
    after}]}``.
    """
    _check_role(role)
    apply = replacer(find, replace, regex=regex)
    with sessions() as session:
        row = datasets.find_dataset(session, name_or_id)
        defaults = datasets.default_captions(row)
        items = datasets.list_items(session, row.id, role=role)
        changes: list[tuple[DatasetItem, str, str]] = []
        for item, _image in items:
            before = item.caption or defaults[item.role]
            if before is None:  # a class item of a dataset without a class prompt
                continue
            after = apply(before)
            if after == before:
                continue
            if not after:
                raise ConfigError(f"the replacement would leave image {item.image_id} uncaptioned")
            if len(after) > datasets.CAPTION_MAX:
                raise ConfigError(
                    f"the replacement would make image {item.image_id}'s caption longer "
                    f"than {datasets.CAPTION_MAX} characters"
                )
            changes.append((item, before, after))
        if not dry_run and changes:
            for item, _before, after in changes:
                item.caption = None if after == defaults[item.role] else after
            row.updated_at = utcnow()
            session.commit()
        return {
            "dataset_id": row.id,
            "changed": len(changes),
            "scanned": len(items),
            "dry_run": dry_run,
            "examples": [
                {"image_id": item.image_id, "role": item.role, "before": before, "after": after}
                for item, before, after in changes[:EXAMPLES_MAX]
            ],
        }


def check_bucket_resolution(resolution: int) -> int:
    """``resolution`` if the histogram can use it, else :class:`ConfigError`."""
    low, high = BUCKET_RESOLUTIONS
    if not low <= resolution <= high:
        raise ConfigError(f"resolution must lie between {low} and {high}, not {resolution}")
    return resolution


def bucket_histogram(
    items: Sequence[tuple[DatasetItem, Image]], resolution: int = 512
) -> dict[str, Any]:
    """How the included instance items fall into aspect-ratio buckets at ``resolution``.

    Each item counts at its crop's size once exported (what training reads), else at
    the photo's size; photos of unknown size are left out.
    """
    from vitdex.training.buckets import histogram

    check_bucket_resolution(resolution)
    sizes: list[tuple[int, int]] = []
    for item, image in items:
        if item.role != "instance" or not item.included:
            continue
        box = (item.crop or {}).get("box")
        if isinstance(box, list) and len(box) == 4 and box[2] > box[0] and box[3] > box[1]:
            sizes.append((int(box[2] - box[0]), int(box[3] - box[1])))
        elif image.width and image.height:
            sizes.append((int(image.width), int(image.height)))
    return {"resolution": resolution, "bins": histogram(sizes, resolution)}
