"""The duplicate scan (exact copies by sha256, near copies in one space) and the review
service the API and the CLI call, each call in a session of its own.

A scan reads what reviewers decided first: photos marked as duplicates take no part, and
every pair of photos a decided group holds together is left out of the new edges, so a
decision is never undone by a scan. The scan's open groups then replace the earlier open
groups of the same kind and space in one transaction (an unchanged group keeps its id).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from vitdex.db import duplicates as dup_sql
from vitdex.db import facets, jobs, repo
from vitdex.db.jobs import JobCancelled
from vitdex.db.review_models import DuplicateKind
from vitdex.errors import ConfigError
from vitdex.filters import SearchFilter
from vitdex.search.duplicates import (
    DEFAULT_K,
    DEFAULT_THRESHOLD,
    MemberInfo,
    components,
    near_edges,
    suggest_keeper,
)
from vitdex.search.spaces import resolve_space

if TYPE_CHECKING:
    from vitdex.config import Settings
    from vitdex.vectors.store import VectorStore

__all__ = [
    "DEFAULT_THRESHOLD",
    "ScanReport",
    "check_scan_args",
    "get_duplicate_group",
    "list_duplicate_groups",
    "queue_duplicates_scan",
    "resolve_duplicate_group",
    "scan_duplicates",
    "undo_duplicate_group",
]

Progress = Callable[[int, int], None]


@dataclass
class ScanReport:
    """What a scan found and how long it took."""

    space: str
    threshold: float
    #: Images that took part (after filters and duplicate marks).
    images: int
    exact_groups: int
    near_groups: int
    #: Open groups created, and open groups found again unchanged (their id kept).
    new_groups: int
    kept_groups: int
    seconds: float

    def counts(self) -> dict[str, Any]:
        """The report as a job's counts."""
        return {**asdict(self), "groups": self.exact_groups + self.near_groups}


def check_scan_args(threshold: float, k: int) -> None:
    """A :class:`ConfigError` for a threshold outside (0, 1] or a ``k`` outside [2, 1024]."""
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"threshold must lie in (0, 1], not {threshold}")
    if not 2 <= k <= 1024:
        raise ConfigError(f"k must lie between 2 and 1024, not {k}")


def _exact_found(sha_groups: Sequence[list[int]], decided: set[tuple[int, int]]) -> list[list[int]]:
    """Exact groups with decided pairs taken apart (a pair judged stays judged)."""
    out: list[list[int]] = []
    for ids in sha_groups:
        pairs = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1 :]]
        if not any(p in decided for p in pairs):
            out.append(ids)
        else:
            out.extend(components([p for p in pairs if p not in decided]))
    return out


def _found(
    groups: Sequence[list[int]],
    facts: Mapping[int, tuple[Any, ...]],
    score: Callable[[list[int], int], dict[int, float]],
) -> list[dup_sql.FoundGroup]:
    out = []
    for ids in groups:
        infos = [MemberInfo(i, *facts[i]) for i in ids if i in facts]
        if len(infos) < 2:
            continue  # an image deleted meanwhile
        keeper, reason = suggest_keeper(infos)
        members = [m.image_id for m in infos]
        out.append(dup_sql.FoundGroup(score(members, keeper), keeper, reason))
    return out


def _cosines(store: VectorStore) -> Callable[[list[int], int], dict[int, float]]:
    def score(members: list[int], keeper: int) -> dict[int, float]:
        vectors = store.get(np.asarray(members, dtype=np.int64))
        sims = vectors @ vectors[members.index(keeper)]
        return {
            i: 1.0 if i == keeper else float(min(1.0, s))
            for i, s in zip(members, sims.tolist(), strict=True)
        }

    return score


def scan_duplicates(
    settings: Settings,
    sessions: sessionmaker[Session],
    *,
    space: str | None = None,
    threshold: float | None = None,
    exact: bool = True,
    near: bool = True,
    k: int = DEFAULT_K,
    filter: SearchFilter | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ScanReport:
    """Find exact and near-duplicate groups and make them the open groups for review.

    ``space`` (None: the first configured) is where near copies are looked for, at
    cosine ``threshold`` (None: :data:`DEFAULT_THRESHOLD`) with ``k`` neighbours per
    photo on the first pass. ``filter`` restricts the photos that take part; the open
    groups it replaces are then only those lying wholly inside it. ``progress(done,
    total)`` counts photos searched; ``should_stop`` is polled between chunks.
    """
    from vitdex.vectors.factory import open_store

    started = time.monotonic()
    cut = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    check_scan_args(cut, k)
    if not (exact or near):
        raise ConfigError("nothing to scan: both exact and near are off")
    report = progress or (lambda _d, _t: None)
    stop = should_stop or (lambda: False)
    filtered = filter is not None and not filter.is_empty()

    with sessions() as session:
        space_row = resolve_space(session, settings.model.spaces[0], space)
        if filter is not None and filtered:
            wanted = repo.filter_image_ids(session, filter, space_row.id)
            if not wanted:
                misses = facets.filter_misses(session, filter)
                if misses:
                    raise ConfigError("; ".join(m.message for m in misses))
        else:
            wanted = repo.vector_image_ids(session, space_row.id)
        marked = dup_sql.marked_image_ids(session)
        decided = dup_sql.decided_pairs(session)
        scope = set(wanted) - marked
        sha_groups = dup_sql.exact_groups(session, scope if filtered else None)
    exact_of = {i: n for n, ids in enumerate(sha_groups) for i in ids}

    def skip(a: int, b: int) -> bool:
        # An exact pair belongs to its exact group; a decided pair stays decided.
        same = exact_of.get(a)
        return (same is not None and exact_of.get(b) == same) or (a, b) in decided

    store = open_store(settings, space_row.name, space_row.dim, space_row.metric)
    try:
        ids = np.intersect1d(np.fromiter(scope, np.int64, len(scope)), store.ids())
        total = len(ids) if near else 1
        report(0, total)
        near_groups: list[list[int]] = []
        if near and len(ids) > 1:
            edges = near_edges(
                store,
                ids,
                cut,
                k=k,
                allowed_ids=ids if filtered else None,
                skip_pair=skip,
                progress=lambda done, _t: report(done, total),
                should_stop=stop,
            )
            near_groups = components(edges)
        exact_found = _exact_found(sha_groups, decided) if exact else []
        if stop():
            raise JobCancelled()
        members = sorted({i for g in (*exact_found, *near_groups) for i in g})
        with sessions() as session:
            facts = dup_sql.image_facts(session, members)
        exact_rows = _found(exact_found, facts, lambda m, _k: dict.fromkeys(m, 1.0))
        near_rows = _found(near_groups, facts, _cosines(store))
    finally:
        store.close()

    new = unchanged = 0
    with sessions() as session:
        if exact:
            n, u = dup_sql.replace_open_groups(
                session,
                kind=DuplicateKind.EXACT,
                space_id=None,
                threshold=None,
                groups=exact_rows,
                scope=scope if filtered else None,
                seen_pairs=decided,
                seen_marked=marked,
            )
            new, unchanged = new + n, unchanged + u
        if near:
            n, u = dup_sql.replace_open_groups(
                session,
                kind=DuplicateKind.NEAR,
                space_id=space_row.id,
                threshold=cut,
                groups=near_rows,
                scope=scope if filtered else None,
                seen_pairs=decided,
                seen_marked=marked,
            )
            new, unchanged = new + n, unchanged + u
        session.commit()
    report(total, total)
    return ScanReport(
        space=space_row.name,
        threshold=cut,
        images=len(ids) if near else len(scope),
        exact_groups=len(exact_rows),
        near_groups=len(near_rows),
        new_groups=new,
        kept_groups=unchanged,
        seconds=round(time.monotonic() - started, 3),
    )


# --------------------------------------------------------------------------- review


def list_duplicate_groups(
    sessions: sessionmaker[Session],
    *,
    status: str = "open",
    kind: str | None = None,
    space: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[int, dict[str, int], list[dict[str, Any]]]:
    """The total matching, the counts per status (and marked photos) and one page."""
    with sessions() as session:
        total, groups = dup_sql.list_groups(
            session, status=status, kind=kind, space=space, limit=limit, offset=offset
        )
        return total, dup_sql.count_by_status(session), groups


def get_duplicate_group(sessions: sessionmaker[Session], group_id: int) -> dict[str, Any]:
    """One group with its members; :class:`NotFoundError` for an unknown id."""
    with sessions() as session:
        return dup_sql.get_group(session, group_id)


def resolve_duplicate_group(
    sessions: sessionmaker[Session], group_id: int, action: str, keeper_id: int | None = None
) -> dict[str, Any]:
    """Keep one member (the others become marked duplicates) or say "not duplicates"."""
    with sessions() as session:
        out = dup_sql.resolve_group(session, group_id, action, keeper_id)
        session.commit()
        return out


def undo_duplicate_group(sessions: sessionmaker[Session], group_id: int) -> dict[str, Any]:
    """Reopen a decided group: the keeper is cleared and its marks lifted."""
    with sessions() as session:
        out = dup_sql.undo_group(session, group_id)
        session.commit()
        return out


def queue_duplicates_scan(
    sessions: sessionmaker[Session], space: str | None, params: Mapping[str, Any]
) -> dict[str, Any]:
    """A queued ``duplicates`` job row (committed; the caller submits it).

    An unknown space is refused now rather than failing the job later.
    """
    with sessions() as session:
        if space is not None:
            repo.get_space(session, space)
        job, _ = jobs.enqueue_job_row(session, "duplicates", {"space": space, **params})
        session.commit()
        return jobs.job_to_dict(job)
