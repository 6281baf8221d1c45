"""Curating DreamBooth datasets from search results.

A user names a few seed photos of the subject (catalog ids, or files); vitdex pulls their
nearest neighbours from one space of the index and decides, for every candidate, whether
it joins the instance set and why. :mod:`.selection` holds those rules (pure functions
of vectors), :mod:`.samplers` the ways a capped set is picked (nearest, diverse,
representative); :mod:`.service` retrieves the candidates, stores the dataset and edits
it.
"""

from __future__ import annotations

from vitdex.training.curate.edits import (
    bucket_histogram,
    list_captions,
    replace_captions,
    update_dataset,
)
from vitdex.training.curate.samplers import SAMPLERS
from vitdex.training.curate.selection import (
    DEFAULT_CLASS_COUNT,
    DEFAULT_DEDUP,
    CurateOptions,
    InstanceSelection,
    choose_instances,
    select_class,
    select_instances,
)
from vitdex.training.curate.service import (
    create_dataset,
    delete_dataset,
    exclude_images,
    include_images,
    list_datasets,
    parse_seed,
    set_caption,
    show_dataset,
)

__all__ = [
    "DEFAULT_CLASS_COUNT",
    "DEFAULT_DEDUP",
    "SAMPLERS",
    "CurateOptions",
    "InstanceSelection",
    "bucket_histogram",
    "choose_instances",
    "create_dataset",
    "delete_dataset",
    "exclude_images",
    "include_images",
    "list_captions",
    "list_datasets",
    "parse_seed",
    "replace_captions",
    "select_class",
    "select_instances",
    "set_caption",
    "show_dataset",
    "update_dataset",
]
