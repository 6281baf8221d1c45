"""Bodies of duplicate review: groups of exact and near copies, and a page of them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self

from vitdex.api.schemas.base import FromDict


@dataclass
class DuplicateMemberOut(FromDict):
    """A photo of a group, with enough to show it and to choose between the members."""

    image_id: int
    path: str
    width: int | None
    height: int | None
    #: File size in bytes.
    size: int
    taken_at: str | None
    format: str | None
    #: Cosine similarity to the suggested keeper (1.0 for exact copies and the keeper).
    score: float | None
    #: ``GET`` it for a JPEG thumbnail (``?size=`` as on that route).
    thumbnail_url: str
    #: This is the member the rules suggest keeping.
    suggested: bool
    #: The reviewer kept this member.
    kept: bool
    #: The reviewer kept another member: this photo is marked as a duplicate.
    marked: bool

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Self:
        """The member, with its thumbnail's URL."""
        image_id = int(data["image_id"])
        return super().of({**data, "thumbnail_url": f"/api/v1/images/{image_id}/thumbnail"})


@dataclass
class DuplicateGroupOut(FromDict):
    """Photos found to be copies of each other, and what the reviewer decided."""

    nested: ClassVar[Mapping[str, type[FromDict]]] = {"members": DuplicateMemberOut}

    id: int
    kind: Literal["exact", "near"]
    #: The space a near group was found in (null for exact copies).
    space: str | None
    #: The cosine threshold a near group was found at.
    threshold: float | None
    status: Literal["open", "kept", "not_duplicates"]
    suggested_keeper_id: int | None
    keeper_id: int | None
    #: Why the suggested keeper was suggested, in a sentence.
    reason: str | None
    #: The lowest similarity of a member to the suggested keeper.
    min_score: float | None
    created_at: str
    decided_at: str | None
    #: The suggested keeper first, then by score, highest first.
    members: list[DuplicateMemberOut]


@dataclass
class DuplicateCounts:
    """Groups per status, and how many photos are marked as duplicates."""

    open: int
    kept: int
    not_duplicates: int
    marked_images: int


@dataclass
class DuplicatePage:
    """One page of groups (open first, then by id) with the total and the counts."""

    total: int
    limit: int
    offset: int
    counts: DuplicateCounts
    groups: list[DuplicateGroupOut]
