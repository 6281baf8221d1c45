"""Duplicate groups (exact and near copies) and their review.

``POST /api/v1/duplicates/scan`` answers 202 with a ``duplicates`` job (as clusterings
do); the groups it finds are then read, kept or dismissed one by one. Nothing here
deletes or moves a file: keeping one member only marks the others as duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED
from litestar.types import Guard
from sqlalchemy.orm import Session, sessionmaker

from vitdex.api.deps import Services
from vitdex.api.errors import Conflict, NotFound, Unavailable
from vitdex.api.schemas import JobOut, JobQueued
from vitdex.api.schemas.duplicates import DuplicateCounts, DuplicateGroupOut, DuplicatePage
from vitdex.api.schemas.filters import FilterIn, filter_params
from vitdex.api.validation import json_content_type
from vitdex.db.models import INT64_MAX
from vitdex.errors import ConfigError
from vitdex.search import duplicate_scan
from vitdex.search.duplicates import DEFAULT_K

Id = Annotated[int, PathParameter(ge=1, le=INT64_MAX)]


class DuplicateScanIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What to scan: exact copies (the same bytes) and near copies in one space.

    Unknown fields are refused: a misspelt option must not start a different scan.
    """

    space: str | None = None
    #: Cosine at or above which photos are near copies, in (0, 1]; null: the default.
    threshold: float | None = None
    exact: bool = True
    near: bool = True
    #: Neighbours asked per photo on the first pass (2..1024).
    k: int = DEFAULT_K
    #: The same filters as a clustering: only the photos they allow take part.
    filter: FilterIn | None = None


class DuplicateResolveIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A decision on an open group: keep one member (``keeper_id``), or not duplicates."""

    action: Literal["keep", "not_duplicates"]
    keeper_id: int | None = None


class DuplicatesController(Controller):
    """``/api/v1/duplicates``: Duplicate groups (exact and near copies) and their review."""

    path = "/duplicates"
    tags: Sequence[str] = ["duplicates"]
    guards: Sequence[Guard] = [json_content_type]

    @get(
        "/",
        sync_to_thread=True,
        operation_id="listDuplicateGroups",
        summary="List duplicate groups",
        description=(
            "One page of duplicate groups with their members (suggested keeper first), open "
            "groups first then by id, with the counts per status and of marked photos."
        ),
    )
    def list_groups(
        self,
        sessions: NamedDependency[sessionmaker[Session]],
        status: Annotated[
            Literal["open", "kept", "not_duplicates", "all"],
            QueryParameter(description="open, kept, not_duplicates or all"),
        ] = "open",
        kind: Annotated[
            Literal["exact", "near"] | None, QueryParameter(description="exact or near")
        ] = None,
        space: Annotated[str | None, QueryParameter(description="near groups of one space")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        offset: Annotated[int, QueryParameter(ge=0, le=INT64_MAX)] = 0,
    ) -> DuplicatePage:
        """One page of duplicate groups with their members, and the counts."""
        total, counts, groups = duplicate_scan.list_duplicate_groups(
            sessions, status=status, kind=kind, space=space, limit=limit, offset=offset
        )
        return DuplicatePage(
            total=total,
            limit=limit,
            offset=offset,
            counts=DuplicateCounts(**counts),
            groups=[DuplicateGroupOut.of(g) for g in groups],
        )

    @get(
        "/{group_id:int}",
        sync_to_thread=True,
        operation_id="getDuplicateGroup",
        summary="Get one duplicate group",
        description="One duplicate group with its members, the suggested keeper first.",
    )
    def get_group(
        self, sessions: NamedDependency[sessionmaker[Session]], group_id: Id
    ) -> DuplicateGroupOut:
        """One duplicate group with its members, the suggested keeper first."""
        return DuplicateGroupOut.of(duplicate_scan.get_duplicate_group(sessions, group_id))

    @post(
        "/scan",
        status_code=HTTP_202_ACCEPTED,
        sync_to_thread=True,
        raises=[NotFound, Unavailable],
        operation_id="scanDuplicates",
        summary="Scan for duplicates",
        description=(
            "Enqueue a scan for exact copies (same sha256) and near copies (cosine at or above "
            "threshold in a space). Its open groups replace the earlier scan's; decided groups "
            "are never reopened. The job's counts say what it found."
        ),
    )
    def scan(
        self,
        data: JSONBody[DuplicateScanIn],
        sessions: NamedDependency[sessionmaker[Session]],
        services: NamedDependency[Services],
    ) -> JobQueued:
        """Enqueue a scan for exact and near copies; the job's counts say what it found."""
        duplicate_scan.check_scan_args(
            duplicate_scan.DEFAULT_THRESHOLD if data.threshold is None else data.threshold, data.k
        )
        if not (data.exact or data.near):
            raise ConfigError("nothing to scan: exact and near are both false")
        params = {
            "threshold": data.threshold,
            "exact": data.exact,
            "near": data.near,
            "k": data.k,
            "filter": filter_params(data.filter),
        }
        job = duplicate_scan.queue_duplicates_scan(sessions, data.space, params)
        services.queue.submit(job["id"], kind="duplicates")
        return JobQueued(job=JobOut.of(job))

    @post(
        "/{group_id:int}/resolve",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        raises=[Conflict],
        operation_id="resolveDuplicateGroup",
        summary="Decide a duplicate group",
        description=(
            'Keep one member ({"action": "keep", "keeper_id": ID}: the others are marked as '
            'duplicates, no file is touched) or dismiss the group ({"action": '
            '"not_duplicates"}: it never comes back). 409 when the group is already decided '
            "(undo it first); 400 when keeper_id is missing or not a member."
        ),
    )
    def resolve(
        self,
        data: JSONBody[DuplicateResolveIn],
        sessions: NamedDependency[sessionmaker[Session]],
        group_id: Id,
    ) -> DuplicateGroupOut:
        """Keep one member or dismiss the group; 409 when it is already decided."""
        group = duplicate_scan.resolve_duplicate_group(
            sessions, group_id, data.action, data.keeper_id
        )
        return DuplicateGroupOut.of(group)

    @post(
        "/{group_id:int}/undo",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        raises=[Conflict],
        operation_id="undoDuplicateGroup",
        summary="Reopen a decided duplicate group",
        description=(
            "Undo a decision: the group is open again, its keeper cleared and its marks lifted."
            " 409 when the group is open."
        ),
    )
    def undo(
        self, sessions: NamedDependency[sessionmaker[Session]], group_id: Id
    ) -> DuplicateGroupOut:
        """Undo a decision: the group is open again; 409 when it is open."""
        return DuplicateGroupOut.of(duplicate_scan.undo_duplicate_group(sessions, group_id))
