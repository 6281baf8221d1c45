"""SQL of duplicate groups: exact copies by sha256, decided pairs, replacing a scan's open
groups, reading groups for review and recording decisions.

Semantics live in :mod:`vitdex.db.review_models`: a decided group (kept, not duplicates)
is never reopened or altered by a scan; "kept" only marks the other members.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.orm import Session

from vitdex.db.images import marked_duplicate
from vitdex.db.models import Image, ImageStatus, Space, iso, utcnow
from vitdex.db.review_models import DuplicateGroup, DuplicateMember, DuplicateStatus
from vitdex.errors import ConfigError, ConflictError, NotFoundError

__all__ = [
    "DECIDED",
    "FoundGroup",
    "count_by_status",
    "decided_pairs",
    "exact_groups",
    "get_group",
    "image_facts",
    "list_groups",
    "lock_scan",
    "marked_image_ids",
    "member_rows",
    "replace_open_groups",
    "resolve_group",
    "undo_group",
]

#: The statuses a reviewer set: such groups are never touched by a scan.
DECIDED = (DuplicateStatus.KEPT, DuplicateStatus.NOT_DUPLICATES)
#: Rows per bulk statement (well under every driver's bound-parameter limit).
_CHUNK = 2000


@dataclass
class FoundGroup:
    """A group a scan found: members with their score, the suggestion and its reason."""

    members: dict[int, float]
    suggested_keeper_id: int
    reason: str

    @property
    def min_score(self) -> float:
        """The lowest similarity of a member to the suggested keeper."""
        return min(self.members.values())


def exact_groups(session: Session, allowed: Iterable[int] | None = None) -> list[list[int]]:
    """Indexed images sharing a sha256 (two or more), ids ascending, groups by first id.

    Photos already marked as duplicates take no part; ``allowed`` (None: every image)
    restricts the images considered.
    """
    stmt = select(Image.sha256, Image.id).where(
        Image.status == ImageStatus.INDEXED,
        Image.sha256.is_not(None),
        ~marked_duplicate(Image.id),
    )
    shared = (
        select(Image.sha256)
        .where(Image.status == ImageStatus.INDEXED, Image.sha256.is_not(None))
        .group_by(Image.sha256)
        .having(func.count() > 1)
    )
    stmt = stmt.where(Image.sha256.in_(shared)).order_by(Image.sha256, Image.id)
    keep = None if allowed is None else set(allowed)
    by_sha: dict[str, list[int]] = {}
    for sha, image_id in session.execute(stmt):
        if keep is None or image_id in keep:
            by_sha.setdefault(str(sha), []).append(int(image_id))
    groups = [ids for ids in by_sha.values() if len(ids) > 1]
    return sorted(groups, key=lambda ids: ids[0])


def image_facts(
    session: Session, ids: Sequence[int]
) -> dict[int, tuple[int | None, int | None, int, datetime | None, int]]:
    """``(width, height, size, taken_at, mtime_ns)`` of each image: what keeper rules weigh."""
    out: dict[int, tuple[int | None, int | None, int, datetime | None, int]] = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = list(ids[start : start + _CHUNK])
        rows = session.execute(
            select(
                Image.id, Image.width, Image.height, Image.size, Image.taken_at, Image.mtime_ns
            ).where(Image.id.in_(chunk))
        )
        for image_id, width, height, size, taken_at, mtime_ns in rows:
            out[int(image_id)] = (width, height, int(size), taken_at, int(mtime_ns))
    return out


def marked_image_ids(session: Session) -> set[int]:
    """Ids of the photos marked as duplicates (in a kept group whose keeper is another)."""
    return set(session.scalars(select(Image.id).where(marked_duplicate(Image.id))))


def decided_pairs(session: Session) -> set[tuple[int, int]]:
    """Every pair ``(lower id, higher id)`` of photos that a decided group holds together."""
    rows = session.execute(
        select(DuplicateMember.group_id, DuplicateMember.image_id)
        .join(DuplicateGroup, DuplicateGroup.id == DuplicateMember.group_id)
        .where(DuplicateGroup.status.in_(DECIDED))
        .order_by(DuplicateMember.group_id, DuplicateMember.image_id)
    )
    by_group: dict[int, list[int]] = {}
    for group_id, image_id in rows:
        by_group.setdefault(group_id, []).append(int(image_id))
    pairs: set[tuple[int, int]] = set()
    for ids in by_group.values():
        for i, a in enumerate(ids):
            pairs.update((a, b) for b in ids[i + 1 :])
    return pairs


def lock_scan(session: Session, kind: str, space_id: int | None) -> None:
    """Take, for this transaction, the right to replace the open groups of one scan.

    PostgreSQL: an advisory lock per kind and space, so two scans replace one after the
    other. SQLite: a write statement up front takes the database's write lock before
    anything is read (a read transaction that later writes would fail when another
    writer committed in between, instead of waiting).
    """
    if session.get_bind().dialect.name == "postgresql":
        key = (1 if kind == "exact" else 2) * 1_000_003 + int(space_id or 0)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": 0x0D0B_0000 + key})
    else:
        session.execute(
            update(DuplicateGroup)
            .where(DuplicateGroup.id == -1)
            .values(status=DuplicateGroup.status)
        )


def replace_open_groups(
    session: Session,
    *,
    kind: str,
    space_id: int | None,
    threshold: float | None,
    groups: Sequence[FoundGroup],
    scope: set[int] | None = None,
    seen_pairs: set[tuple[int, int]] | None = None,
    seen_marked: set[int] | None = None,
) -> tuple[int, int]:
    """Make ``groups`` the open groups of this kind and space; returns ``(new, kept)``.

    An open group whose member set is unchanged keeps its id (only its suggestion and
    scores are refreshed); other open groups of this kind and space are dropped. With
    ``scope`` (the images a filtered scan looked at) only open groups lying wholly inside
    it are replaced: a scan of one folder leaves the others' groups alone. A found group
    that clashes with a decision taken while the scan ran (a pair decided, a photo marked
    since ``seen_pairs`` and ``seen_marked`` were read) is left for the next scan. The
    caller commits.
    """
    lock_scan(session, kind, space_id)
    pairs = decided_pairs(session) - (seen_pairs or set())
    marked = marked_image_ids(session) - (seen_marked or set())
    stmt = (
        select(DuplicateMember.group_id, DuplicateMember.image_id)
        .join(DuplicateGroup, DuplicateGroup.id == DuplicateMember.group_id)
        .where(DuplicateGroup.status == DuplicateStatus.OPEN, DuplicateGroup.kind == kind)
    )
    if space_id is None:
        stmt = stmt.where(DuplicateGroup.space_id.is_(None))
    else:
        stmt = stmt.where(DuplicateGroup.space_id == space_id)
    existing: dict[int, set[int]] = {}
    for group_id, image_id in session.execute(stmt):
        existing.setdefault(int(group_id), set()).add(int(image_id))
    if scope is not None:
        existing = {g: ids for g, ids in existing.items() if ids <= scope}
    by_members = {frozenset(ids): g for g, ids in existing.items()}

    def clashes(ids: Sequence[int]) -> bool:
        if marked.intersection(ids):
            return True
        ordered = sorted(ids)
        return any((a, b) in pairs for i, a in enumerate(ordered) for b in ordered[i + 1 :])

    kept_ids: set[int] = set()
    new = 0
    for group in groups:
        ids = sorted(group.members)
        if clashes(ids):
            continue
        values: dict[str, Any] = {
            "suggested_keeper_id": group.suggested_keeper_id,
            "reason": group.reason,
            "min_score": group.min_score,
            "threshold": threshold,
        }
        same = by_members.get(frozenset(ids))
        if same is not None and same not in kept_ids:
            kept_ids.add(same)
            session.execute(update(DuplicateGroup).where(DuplicateGroup.id == same).values(values))
            for image_id, score in group.members.items():
                session.execute(
                    update(DuplicateMember)
                    .where(DuplicateMember.group_id == same, DuplicateMember.image_id == image_id)
                    .values(score=score)
                )
            continue
        row = DuplicateGroup(kind=kind, space_id=space_id, status=DuplicateStatus.OPEN, **values)
        session.add(row)
        session.flush()
        new += 1
        rows = [{"group_id": row.id, "image_id": i, "score": s} for i, s in group.members.items()]
        for start in range(0, len(rows), _CHUNK):
            session.execute(insert(DuplicateMember), rows[start : start + _CHUNK])
    stale = [g for g in existing if g not in kept_ids]
    for start in range(0, len(stale), _CHUNK):
        chunk = stale[start : start + _CHUNK]
        # Members first: SQLite enforces ON DELETE CASCADE only with foreign keys on.
        session.execute(delete(DuplicateMember).where(DuplicateMember.group_id.in_(chunk)))
        session.execute(delete(DuplicateGroup).where(DuplicateGroup.id.in_(chunk)))
    return new, len(kept_ids)


# --------------------------------------------------------------------------- reading


def _status_filter(status: str) -> list[str]:
    if status == "all":
        return [s.value for s in DuplicateStatus]
    try:
        return [DuplicateStatus(status).value]
    except ValueError:
        known = ", ".join([*(s.value for s in DuplicateStatus), "all"])
        raise ConfigError(f"unknown duplicate status {status!r} (one of: {known})") from None


def count_by_status(session: Session) -> dict[str, int]:
    """Groups per status (every status present, zero when none) and ``marked_images``."""
    counts = {s.value: 0 for s in DuplicateStatus}
    for status, n in session.execute(
        select(DuplicateGroup.status, func.count()).group_by(DuplicateGroup.status)
    ):
        counts[str(status)] = int(n)
    marked = session.scalar(
        select(func.count()).select_from(Image).where(marked_duplicate(Image.id))
    )
    counts["marked_images"] = int(marked or 0)
    return counts


def member_rows(session: Session, group_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """Each group's members with their image's path, size, dimensions, date and format."""
    out: dict[int, list[dict[str, Any]]] = {g: [] for g in group_ids}
    for start in range(0, len(group_ids), _CHUNK):
        chunk = list(group_ids[start : start + _CHUNK])
        rows = session.execute(
            select(DuplicateMember.group_id, DuplicateMember.score, Image)
            .join(Image, Image.id == DuplicateMember.image_id)
            .where(DuplicateMember.group_id.in_(chunk))
        )
        for group_id, score, img in rows:
            out[int(group_id)].append(
                {
                    "image_id": img.id,
                    "path": img.path,
                    "width": img.width,
                    "height": img.height,
                    "size": img.size,
                    "taken_at": iso(img.taken_at),
                    "format": img.format,
                    "score": None if score is None else round(float(score), 6),
                }
            )
    return out


def _group_dict(
    group: DuplicateGroup, space: str | None, members: list[dict[str, Any]]
) -> dict[str, Any]:
    suggested = group.suggested_keeper_id
    marking = group.status == DuplicateStatus.KEPT
    for m in members:
        m["suggested"] = m["image_id"] == suggested
        m["kept"] = marking and m["image_id"] == group.keeper_id
        m["marked"] = marking and m["image_id"] != group.keeper_id
    # Suggested keeper first, then the closest to it.
    members.sort(key=lambda m: (not m["suggested"], -(m["score"] or 0.0), m["image_id"]))
    return {
        "id": group.id,
        "kind": group.kind,
        "space": space,
        "threshold": group.threshold,
        "status": group.status,
        "suggested_keeper_id": suggested,
        "keeper_id": group.keeper_id,
        "reason": group.reason,
        "min_score": None if group.min_score is None else round(float(group.min_score), 6),
        "created_at": iso(group.created_at),
        "decided_at": iso(group.decided_at),
        "members": members,
    }


def _dicts(session: Session, groups: Sequence[DuplicateGroup]) -> list[dict[str, Any]]:
    space_ids = {g.space_id for g in groups if g.space_id is not None}
    names: dict[int, str] = {}
    if space_ids:
        rows = session.execute(select(Space.id, Space.name).where(Space.id.in_(space_ids)))
        names = {int(space_id): str(name) for space_id, name in rows}
    members = member_rows(session, [g.id for g in groups])
    return [
        _group_dict(g, names.get(g.space_id) if g.space_id else None, members[g.id]) for g in groups
    ]


def list_groups(
    session: Session,
    *,
    status: str = "open",
    kind: str | None = None,
    space: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[int, list[dict[str, Any]]]:
    """The total matching and one page of groups with their members: open first, then by id."""
    stmt = select(DuplicateGroup).where(DuplicateGroup.status.in_(_status_filter(status)))
    if kind is not None:
        if kind not in ("exact", "near"):
            raise ConfigError(f"unknown duplicate kind {kind!r} (one of: exact, near)")
        stmt = stmt.where(DuplicateGroup.kind == kind)
    if space is not None:
        stmt = stmt.join(Space, Space.id == DuplicateGroup.space_id).where(Space.name == space)
    total = int(session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
    open_first = (DuplicateGroup.status != DuplicateStatus.OPEN).asc()
    page = session.scalars(
        stmt.order_by(open_first, DuplicateGroup.id).limit(limit).offset(offset)
    ).all()
    return total, _dicts(session, page)


def _group(session: Session, group_id: int) -> DuplicateGroup:
    group = session.get(DuplicateGroup, group_id)
    if group is None:
        raise NotFoundError(f"no duplicate group with id {group_id}")
    return group


def get_group(session: Session, group_id: int) -> dict[str, Any]:
    """One group with its members; :class:`NotFoundError` for an unknown id."""
    return _dicts(session, [_group(session, group_id)])[0]


def resolve_group(
    session: Session, group_id: int, action: str, keeper_id: int | None = None
) -> dict[str, Any]:
    """Decide an open group: ``keep`` one member (the others become marked duplicates;
    no file is touched) or ``not_duplicates``. A decided group is a
    :class:`ConflictError` (undo first); a keeper outside the group a :class:`ConfigError`.
    The caller commits.
    """
    group = session.get(DuplicateGroup, group_id, with_for_update=True)
    if group is None:
        raise NotFoundError(f"no duplicate group with id {group_id}")
    if group.status != DuplicateStatus.OPEN:
        raise ConflictError(
            f"duplicate group {group_id} is already decided ({group.status}); undo it first"
        )
    if action == "keep":
        if keeper_id is None:
            raise ConfigError("action 'keep' needs keeper_id")
        members = set(
            session.scalars(
                select(DuplicateMember.image_id).where(DuplicateMember.group_id == group_id)
            )
        )
        if keeper_id not in members:
            shown = ", ".join(str(i) for i in sorted(members))
            raise ConfigError(
                f"image {keeper_id} is not a member of duplicate group {group_id} "
                f"(members: {shown})"
            )
        group.status, group.keeper_id = DuplicateStatus.KEPT, keeper_id
    elif action == "not_duplicates":
        group.status, group.keeper_id = DuplicateStatus.NOT_DUPLICATES, None
    else:
        raise ConfigError(f"unknown action {action!r} (one of: keep, not_duplicates)")
    group.decided_at = utcnow()
    session.flush()
    return get_group(session, group_id)


def undo_group(session: Session, group_id: int) -> dict[str, Any]:
    """Reopen a decided group (keeper cleared, marks lifted); an open one is a conflict."""
    group = session.get(DuplicateGroup, group_id, with_for_update=True)
    if group is None:
        raise NotFoundError(f"no duplicate group with id {group_id}")
    if group.status == DuplicateStatus.OPEN:
        raise ConflictError(f"duplicate group {group_id} is open: there is nothing to undo")
    group.status, group.keeper_id, group.decided_at = DuplicateStatus.OPEN, None, None
    session.flush()
    return get_group(session, group_id)
