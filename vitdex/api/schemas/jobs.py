"""Bodies of the long-running side: jobs, libraries and clustering runs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from vitdex.api.schemas.base import FromDict
from vitdex.db.models import JobState


@dataclass
class JobOut(FromDict):
    """A job: its state, progress (0..1 once the total is known), counts and ETA."""

    id: int
    kind: str
    state: JobState
    params: dict[str, Any]
    total: int | None
    done: int
    progress: float | None
    #: What the job did so far (per kind); a finished job's result.
    counts: dict[str, Any]
    error: str | None
    cancel_requested: bool
    eta_seconds: float | None
    created_at: str
    started_at: str | None
    finished_at: str | None


@dataclass
class JobQueued:
    """The job that does what was asked."""

    job: JobOut


@dataclass
class JobsPage:
    """Jobs, newest first, with the total that match."""

    total: int
    limit: int
    offset: int
    jobs: list[JobOut]


@dataclass
class LibraryOut(FromDict):
    """A registered folder with its images counted per status."""

    id: int
    root: str
    created_at: str | None
    last_scan_at: str | None
    images: dict[str, int]


@dataclass
class LibraryQueued:
    """A library and the job indexing it."""

    library: LibraryOut
    job: JobOut


@dataclass
class LibrariesOut:
    """Every library."""

    libraries: list[LibraryOut]


@dataclass
class LibraryDeleted(FromDict):
    """A forgotten library: its rows and vectors went, its photos stayed."""

    id: int
    root: str
    images_removed: int


@dataclass
class ClusterRunOut(FromDict):
    """A finished clustering of a space."""

    id: int
    job_id: int | None
    space: str
    method: str
    k: int
    params: dict[str, Any]
    n_images: int
    #: Sum over members of (1 - cosine similarity to their centroid).
    inertia: float | None
    #: Mean silhouette (cosine) on a sample; higher is better separated.
    score: float | None
    created_at: str


@dataclass
class ClusterRunsPage:
    """Clustering runs, newest first, with the total."""

    total: int
    runs: list[ClusterRunOut]


@dataclass
class ClusterMemberOut(FromDict):
    """An image of a cluster, its cosine distance to the centroid, and enough to show it
    (its file's path, its thumbnail's URL) without one request per member."""

    image_id: int
    distance: float
    path: str
    #: ``GET`` it for a JPEG thumbnail (``?size=`` as on that route).
    thumbnail_url: str

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> Self:
        """The member of ``data`` (``image_id``, ``distance``, ``path``), with its URL."""
        image_id = data["image_id"]
        return super().of({**data, "thumbnail_url": f"/api/v1/images/{image_id}/thumbnail"})


@dataclass
class ClusterOut(FromDict):
    """One cluster: its size, medoids and one page of members, closest first."""

    id: int
    #: Rank by size (0 is the largest); -1 is HDBSCAN's noise.
    label: int
    size: int
    noise: bool
    medoid_image_id: int | None
    medoid_image_ids: list[int]
    members: list[ClusterMemberOut]
    members_offset: int
    members_limit: int

    nested: ClassVar[Mapping[str, type[FromDict]]] = {"members": ClusterMemberOut}


@dataclass
class ClusterRunDetail(ClusterRunOut):
    """A clustering run with its clusters."""

    clusters: list[ClusterOut]

    nested: ClassVar[Mapping[str, type[FromDict]]] = {"clusters": ClusterOut}
