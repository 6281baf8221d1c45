"""SQLAlchemy 2 models of the catalog: libraries, images, spaces, vectors, labels, jobs.

The catalog is the source of truth. A vector store holds vectors keyed by ``images.id``;
``image_vectors`` records which image has a vector in which space, so the two can be
checked against each other and repaired.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a real BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")
#: Ids are int64 in the catalog; a larger number can name nothing.
INT64_MAX = 2**63 - 1


def is_id(text: str) -> bool:
    """Whether ``text`` is written as an id (ASCII digits only)."""
    return text.isascii() and text.isdigit()


NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp that always reads back aware: stored in UTC, and tagged
    UTC when the database (SQLite) returns it without a zone."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(
        self,
        value: datetime | None,
        dialect: Dialect,  # noqa: ARG002 - the hook's signature
    ) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def iso(value: datetime | None) -> str | None:
    """ISO 8601 text of a catalog timestamp, or None."""
    return None if value is None else value.isoformat()


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the catalog uses."""
    return datetime.now(UTC)


class ImageStatus(enum.StrEnum):
    """Where an image stands in indexing."""

    PENDING = "pending"  # seen, not (yet) embedded
    INDEXED = "indexed"  # has a vector in every configured space
    FAILED = "failed"  # could not be decoded; ``error`` says why
    MISSING = "missing"  # the file is gone; its vectors were removed


class JobState(enum.StrEnum):
    """Life cycle of a job."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: Longest error text kept on a job or run row (a traceback's tail is noise to a user).
ERROR_MAX = 4000


class Base(DeclarativeBase):
    """Declarative base with stable constraint names (Alembic needs them)."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        datetime: UtcDateTime(),
    }


class Library(Base):
    """An indexed root folder."""

    __tablename__ = "libraries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    root: Mapped[str] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_scan_at: Mapped[datetime | None]

    images: Mapped[list[Image]] = relationship(back_populates="library")


class Image(Base):
    """One photo file, with what its header and EXIF say about it."""

    __tablename__ = "images"
    __table_args__ = (
        Index("ix_images_library_id_status", "library_id", "status"),
        Index("ix_images_taken_at", "taken_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    library_id: Mapped[int] = mapped_column(ForeignKey("libraries.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text, unique=True)
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int | None]
    height: Mapped[int | None]
    format: Mapped[str | None] = mapped_column(String(16))
    taken_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=False))
    camera_make: Mapped[str | None] = mapped_column(String(128))
    camera_model: Mapped[str | None] = mapped_column(String(128))
    orientation: Mapped[int | None]
    gps_lat: Mapped[float | None] = mapped_column(Float)
    gps_lon: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default=ImageStatus.PENDING)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    indexed_at: Mapped[datetime | None]

    library: Mapped[Library] = relationship(back_populates="images")


class Space(Base):
    """A vector space: one model (id + revision), one layer spec, one preprocessing."""

    __tablename__ = "spaces"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    model_id: Mapped[str] = mapped_column(Text)
    model_revision: Mapped[str] = mapped_column(String(128))
    layer: Mapped[str] = mapped_column(String(32))
    preprocessing: Mapped[dict[str, Any]]
    dim: Mapped[int]
    metric: Mapped[str] = mapped_column(String(16))
    #: The least cosine to torch fp32's vectors that a runtime must reach on the probe
    #: photos to write into this space (None: the default, 0.999). A space first filled
    #: by int8 takes int8's bound; an fp32 / bf16 space refuses int8 vectors.
    min_agreement: Mapped[float | None] = mapped_column(Float, default=None)
    #: The runtime and precision that first filled the space ("torch-fp32",
    #: "onnxruntime-int8"), for people reading the catalog.
    runtime: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ImageVector(Base):
    """Records that an image has a vector in a space."""

    __tablename__ = "image_vectors"
    __table_args__ = (Index("ix_image_vectors_space_id", "space_id"),)

    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    space_id: Mapped[int] = mapped_column(
        ForeignKey("spaces.id", ondelete="CASCADE"), primary_key=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ImageLabel(Base):
    """One of an image's top predicted labels."""

    __tablename__ = "image_labels"
    __table_args__ = (
        UniqueConstraint("image_id", "rank"),
        # (label, image_id): label filters and the browsing page's per-label photo counts
        # read this index alone, without visiting the table.
        Index("ix_image_labels_label_image", "label", "image_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    rank: Mapped[int]
    label: Mapped[str] = mapped_column(String(256))
    score: Mapped[float] = mapped_column(Float)
    model_id: Mapped[str] = mapped_column(Text)


class CatalogInfo(Base):
    """The catalog's identity: one row, written by the migration that made the table.

    Job queues name their entries by it, so two catalogs sharing one Redis never take
    each other's job rows for their own.
    """

    __tablename__ = "catalog"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """A long-running operation with its progress; survives the process that ran it."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state", "state"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    total: Mapped[int | None]
    done: Mapped[int] = mapped_column(default=0)
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    #: Written every few seconds while a job runs (vitdex.db.recovery): a running job
    #: whose heartbeat stopped lost its process and is an orphan.
    heartbeat_at: Mapped[datetime | None]


class ClusterRun(Base):
    """One clustering of a space's vectors (k-means or HDBSCAN), with how well it fit."""

    __tablename__ = "cluster_runs"
    __table_args__ = (Index("ix_cluster_runs_space_id", "space_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    space_id: Mapped[int] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"))
    method: Mapped[str] = mapped_column(String(16))
    k: Mapped[int]
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    n_images: Mapped[int]
    #: Sum over members of (1 - cosine similarity to their centroid).
    inertia: Mapped[float | None] = mapped_column(Float)
    #: Mean silhouette (cosine) on a sample; higher is better separated.
    score: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Cluster(Base):
    """One cluster of a run; ``label`` is its rank by size (0 = largest, -1 = noise)."""

    __tablename__ = "clusters"
    __table_args__ = (UniqueConstraint("run_id", "label"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("cluster_runs.id", ondelete="CASCADE"))
    label: Mapped[int]
    size: Mapped[int]
    #: The member closest to the centroid.
    medoid_image_id: Mapped[int | None] = mapped_column(
        ForeignKey("images.id", ondelete="SET NULL")
    )


class ClusterMember(Base):
    """An image's cluster in one run and its cosine distance to the cluster's centroid."""

    __tablename__ = "cluster_members"
    __table_args__ = (
        # Covers "members of cluster C of run R, closest first" (paging).
        Index("ix_cluster_members_run_cluster", "run_id", "cluster_id", "distance"),
    )

    run_id: Mapped[int] = mapped_column(
        ForeignKey("cluster_runs.id", ondelete="CASCADE"), primary_key=True
    )
    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    cluster_id: Mapped[int] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"))
    distance: Mapped[float] = mapped_column(Float)


class Dataset(Base):
    """A DreamBooth instance set curated from search results, with how it was made.

    ``params`` holds the curation parameters (seeds, k, min_score, dedup, max, mmr, space)
    so a set can be rebuilt and audited; ``items`` says why each candidate is in or out.
    """

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    prompt: Mapped[str] = mapped_column(Text)
    class_prompt: Mapped[str | None] = mapped_column(Text)
    space_id: Mapped[int | None] = mapped_column(ForeignKey("spaces.id", ondelete="SET NULL"))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: Folder the prepared set (crops, captions, kohya TOML) was last exported to.
    export_path: Mapped[str | None] = mapped_column(Text)
    #: The rare token that names the subject (e.g. ``sks``); default captions start with it.
    trigger_word: Mapped[str | None] = mapped_column(Text)
    #: The subject's class (e.g. ``dog``); default captions end with it.
    class_word: Mapped[str | None] = mapped_column(Text)
    #: ``square`` crops or aspect-ratio ``buckets`` (vitdex.training.buckets).
    crop_mode: Mapped[str] = mapped_column(String(16), default="square", server_default="square")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DatasetItem(Base):
    """One candidate of a dataset: an instance or a class (regularisation) image.

    Every candidate is kept, included or not; ``reason`` says why (``seed``,
    ``neighbour``, ``diverse``, ``representative``, ``not_sampled``, ``below_min_score``,
    ``near_duplicate``, ``over_max``, ``excluded_by_hand``, ``included_by_hand``,
    ``class``).
    """

    __tablename__ = "dataset_items"
    __table_args__ = (
        UniqueConstraint("dataset_id", "role", "image_id"),
        Index("ix_dataset_items_dataset_id_role_rank", "dataset_id", "role", "rank"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    #: ``instance`` or ``class``.
    role: Mapped[str] = mapped_column(String(16))
    rank: Mapped[int]
    #: Similarity to the seeds (higher is closer); ``None`` for the seeds themselves.
    score: Mapped[float | None] = mapped_column(Float)
    included: Mapped[bool]
    reason: Mapped[str] = mapped_column(String(32))
    #: For ``near_duplicate``: the item it duplicates.
    duplicate_of: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"))
    caption: Mapped[str | None] = mapped_column(Text)
    #: Crop box in original (orientation-corrected) pixels: [left, top, right, bottom].
    crop: Mapped[dict[str, Any] | None] = mapped_column()


class TrainingRun(Base):
    """A DreamBooth training run; its output folder holds the resumable checkpoints."""

    __tablename__ = "training_runs"
    __table_args__ = (Index("ix_training_runs_state", "state"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    base_model: Mapped[str] = mapped_column(Text)
    version: Mapped[str] = mapped_column(String(16))
    #: The full training config (the dataclass saved inside every checkpoint).
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED)
    step: Mapped[int] = mapped_column(default=0)
    total_steps: Mapped[int]
    loss: Mapped[float | None] = mapped_column(Float)
    output_dir: Mapped[str] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Checkpoint(Base):
    """A registered single-file Stable Diffusion checkpoint and how to reproduce it."""

    __tablename__ = "checkpoints"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id", ondelete="SET NULL"))
    base_model: Mapped[str] = mapped_column(Text)
    version: Mapped[str] = mapped_column(String(16))
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    #: sha256 over the sorted sha256s of the dataset's included images.
    dataset_hash: Mapped[str | None] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    steps: Mapped[int | None]
    final_loss: Mapped[float | None] = mapped_column(Float)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    #: ``safetensors`` or ``ckpt``.
    format: Mapped[str] = mapped_column(String(16))
    #: Half precision (fp16) weights.
    half: Mapped[bool] = mapped_column(default=False)
    yaml_path: Mapped[str | None] = mapped_column(Text)
    sample_path: Mapped[str | None] = mapped_column(Text)
    #: ``ready``, or ``invalid`` when validation failed (the file is kept for inspection).
    status: Mapped[str] = mapped_column(String(16), default="ready")
    #: ``checkpoint`` (a whole model) or ``lora`` (a difference to its base).
    kind: Mapped[str] = mapped_column(String(16), default="checkpoint", server_default="checkpoint")
    #: For a LoRA extracted from a checkpoint: that checkpoint.
    source_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id", ondelete="SET NULL"))
    #: For a LoRA: its rank.
    lora_rank: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
