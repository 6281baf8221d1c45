"""The catalog as the API and the web pages read it, each call in a session of its own:
image pages, one image, label counts, the folders a photo may be read from, clustering
runs; and a clustering queued as a job.

Callers hold a session factory, never a session, so no request handler writes SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from vitdex.db import browse, facets, jobs, repo
from vitdex.db.models import Image
from vitdex.filters import FilterMiss, SearchFilter
from vitdex.paths import photo_roots
from vitdex.search.cluster import get_cluster_run, list_cluster_runs
from vitdex.search.results import LabelScore, label_scores


@dataclass
class LabelledImage:
    """A catalog image with its predicted labels, best first."""

    image: Image
    labels: list[LabelScore]


def list_images(
    sessions: sessionmaker[Session],
    flt: SearchFilter,
    *,
    status: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[int, list[LabelledImage]]:
    """The total matching ``flt`` (and ``status``) and one page of them, newest photo first."""
    with sessions() as session:
        page = browse.list_images(session, flt, status=status, limit=limit, offset=offset)
        labels = repo.labels_of(session, [img.id for img in page.images])
    return page.total, [
        LabelledImage(img, label_scores(labels.get(img.id, []))) for img in page.images
    ]


def filter_misses(sessions: sessionmaker[Session], flt: SearchFilter) -> list[FilterMiss]:
    """The filter values (camera make, model, label) that no photo has, with close ones."""
    if flt.is_empty():
        return []
    with sessions() as session:
        return facets.filter_misses(session, flt)


def get_image(sessions: sessionmaker[Session], image_id: int) -> LabelledImage:
    """One catalog image with its labels; :class:`NotFoundError` for an unknown id."""
    with sessions() as session:
        img = repo.get_image(session, image_id)
        labels = repo.labels_of(session, [image_id]).get(image_id, [])
    return LabelledImage(img, label_scores(labels))


def label_counts(
    sessions: sessionmaker[Session], limit: int | None = None
) -> list[tuple[str, int]]:
    """Predicted labels with the number of images carrying each, most common first."""
    with sessions() as session:
        return browse.label_counts(session, limit)


def photo(
    sessions: sessionmaker[Session], image_id: int, allowed_roots: Iterable[Path]
) -> tuple[Image, tuple[Path, ...]]:
    """An image and the folders its file may be read from (its library, allowed roots)."""
    with sessions() as session:
        img = repo.get_image(session, image_id)
        root = repo.get_library(session, img.library_id).root
    return img, photo_roots(root, allowed_roots)


def cluster_runs(
    sessions: sessionmaker[Session], *, space: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[dict[str, Any]], int]:
    """Finished clustering runs newest first (without their clusters), and the total."""
    with sessions() as session:
        return list_cluster_runs(session, space=space, limit=limit, offset=offset)


def cluster_run(
    sessions: sessionmaker[Session],
    run_id: int,
    *,
    members_limit: int = 20,
    members_offset: int = 0,
    label: int | None = None,
) -> dict[str, Any]:
    """A run with its clusters, medoids and a page of members (see
    :func:`vitdex.search.cluster.get_cluster_run`)."""
    with sessions() as session:
        return get_cluster_run(
            session,
            run_id,
            members_limit=members_limit,
            members_offset=members_offset,
            cluster=label,
        )


def queue_clustering(
    sessions: sessionmaker[Session], space: str, params: Mapping[str, Any]
) -> dict[str, Any]:
    """A queued ``cluster`` job row for ``space`` (committed; the caller submits it).

    An unknown space is :class:`NotFoundError` now rather than a failed job later.
    """
    with sessions() as session:
        repo.get_space(session, space)
        job, _ = jobs.enqueue_job_row(session, "cluster", {"space": space, **params})
        session.commit()
        return jobs.job_to_dict(job)
