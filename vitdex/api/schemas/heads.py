"""Bodies of the head routes: training and correcting heads, their reports and labels.

Request bodies refuse unknown fields: a misspelt ``from_tag`` must not train a head on
nothing. Answers are made from :mod:`vitdex.search.heads`' dicts with ``msgspec.convert``
against structs that forbid unknown fields, so a change of shape below fails the API's
tests instead of silently dropping a field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self

import msgspec

__all__ = [
    "HeadClassOut",
    "HeadLabelIn",
    "HeadLabelOut",
    "HeadLabelsPage",
    "HeadOut",
    "HeadReportOut",
    "HeadSourceOut",
    "HeadTrainIn",
    "HeadsOut",
]

#: How a head's labelled photos are ordered.
LabelOrder = Literal["uncertain", "confident", "recent"]
#: Where a label came from: the head's prediction or a person's correction.
LabelSourceName = Literal["predicted", "corrected"]


class HeadTrainIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What to train: a head named ``name`` on one space's stored vectors, its classes
    from tags (one class per tag) or from a folder (one class per direct subfolder)."""

    #: Lower-case letters, digits, ``-`` and ``_`` (it is written in filters as HEAD:LABEL).
    name: str
    #: The vector space (default: the first configured).
    space: str | None = None
    #: Tag names, one class each (at least two); or give ``from_folder``.
    from_tags: list[str] = msgspec.field(default_factory=list)
    #: A folder whose direct subfolders are the classes; or give ``from_tags``.
    from_folder: str | None = None
    #: Share of each class held out to measure the head, 0.05 to 0.5.
    test_fraction: float = 0.2
    #: Seed of the held-out split and of the fit (the same seed, the same head).
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)] = 0
    #: Replace a head of the same name instead of answering 409.
    replace: bool = False


class HeadLabelIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A person's label for a photo: one of the head's classes."""

    label: str


class HeadClassOut(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One class's scores on the held-out photos."""

    name: str
    precision: float
    recall: float
    f1: float
    #: Held-out photos of this class.
    support: int


class HeadReportOut(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How well the head did on the photos held out of its training."""

    #: Share of held-out photos labelled right.
    accuracy: float
    classes: list[HeadClassOut]
    #: Counts: rows the true class, columns the predicted one, in ``classes`` order.
    confusion: list[list[int]]
    #: Photos the report's head learnt from, and photos it was measured on.
    train_count: int
    test_count: int
    test_fraction: float
    seed: int
    #: Example photos per class (the stored head was refit on all of them).
    examples: dict[str, int]
    #: What to know about this report (photos left out, corrections used...).
    notes: list[str]


class HeadSourceOut(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a head was trained from: the tags (one class each), or the folder."""

    tags: list[str] | None = None
    folder: str | None = None


class HeadOut(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A head: what it was trained on, its report, and what it labelled."""

    id: int
    name: str
    space: str
    model_id: str
    model_revision: str
    #: Whether the space still holds that model and revision (false: retrain the head).
    model_matches: bool
    #: The vectors' dimension.
    dim: int
    #: ``tags`` or ``folders``.
    source: Literal["tags", "folders"]
    #: What ``source`` named: the tags, or the folder.
    source_spec: HeadSourceOut
    #: Its labels, in the order of the report's rows.
    classes: list[str]
    report: HeadReportOut
    created_at: str
    trained_at: str
    #: When it last labelled the library (null: never applied).
    applied_at: str | None
    #: Photos per label (corrections included).
    label_counts: dict[str, int]
    #: Photos with a label from this head.
    labelled: int
    #: Labels people set by hand (kept through every apply).
    corrections: int

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Self:
        """From :func:`vitdex.search.heads.get_head`'s dict."""
        return msgspec.convert(data, cls)


class HeadsOut(msgspec.Struct, kw_only=True):
    """Every head, by name."""

    heads: list[HeadOut]


class HeadLabelOut(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A photo's label under a head, with how sure the head was (all null when the head
    has not labelled the photo: a correction taken back before any apply)."""

    image_id: int
    path: str
    label: str | None
    #: The predicted probability of ``label`` (1.0 for a correction).
    confidence: float | None
    #: Top probability minus the runner-up's: small means the head hesitated.
    margin: float | None
    source: LabelSourceName | None
    #: The class the head rates second (null for corrections).
    runner_up: str | None
    #: ``GET`` it for a JPEG thumbnail (``?size=`` as on that route).
    thumbnail_url: str

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Self:
        """From an item of :func:`vitdex.search.heads.head_labels`, with its thumbnail."""
        url = f"/api/v1/images/{int(data['image_id'])}/thumbnail"
        return msgspec.convert({**data, "thumbnail_url": url}, cls)


class HeadLabelsPage(msgspec.Struct, kw_only=True):
    """One page of a head's labelled photos, with the total that match."""

    head: str
    total: int
    limit: int
    offset: int
    items: list[HeadLabelOut]
