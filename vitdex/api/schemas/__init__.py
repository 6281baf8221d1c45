"""Request and response bodies of the HTTP API, one module per part of it.

Every handler returns one of these, so the OpenAPI document describes every body field
by field. Hits and labels are the search service's own types, serialised as they are.
"""

from vitdex.api.schemas.base import FromDict
from vitdex.api.schemas.health import HealthOut, ReadyOut
from vitdex.api.schemas.images import ImageOut, ImagesPage, LabelCount, LabelsOut
from vitdex.api.schemas.jobs import (
    ClusterMemberOut,
    ClusterOut,
    ClusterRunDetail,
    ClusterRunOut,
    ClusterRunsPage,
    JobOut,
    JobQueued,
    JobsPage,
    LibrariesOut,
    LibraryDeleted,
    LibraryOut,
    LibraryQueued,
)
from vitdex.api.schemas.search import Classification, FilterNote, Hit, LabelScore, SimilarOut
from vitdex.api.schemas.training import (
    CheckpointDeleted,
    CheckpointDetail,
    CheckpointOut,
    CheckpointsPage,
    DatasetChanged,
    DatasetDeleted,
    DatasetItemOut,
    DatasetOut,
    DatasetsPage,
    DatasetView,
    RunCheckpoint,
    RunOut,
    RunsOut,
)

__all__ = [
    "CheckpointDeleted",
    "CheckpointDetail",
    "CheckpointOut",
    "CheckpointsPage",
    "Classification",
    "ClusterMemberOut",
    "ClusterOut",
    "ClusterRunDetail",
    "ClusterRunOut",
    "ClusterRunsPage",
    "DatasetChanged",
    "DatasetDeleted",
    "DatasetItemOut",
    "DatasetOut",
    "DatasetView",
    "DatasetsPage",
    "FilterNote",
    "FromDict",
    "HealthOut",
    "Hit",
    "ImageOut",
    "ImagesPage",
    "JobOut",
    "JobQueued",
    "JobsPage",
    "LabelCount",
    "LabelScore",
    "LabelsOut",
    "LibrariesOut",
    "LibraryDeleted",
    "LibraryOut",
    "LibraryQueued",
    "ReadyOut",
    "RunCheckpoint",
    "RunOut",
    "RunsOut",
    "SimilarOut",
]
