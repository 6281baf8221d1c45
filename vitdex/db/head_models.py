"""SQL models of heads: linear classifiers people train on stored vectors, and the labels
they put on photos.

A head is trained on one space (so on one model and revision) and refuses any other: its
weights only mean something against the vectors they were fitted on. Labels are keyed by
image id, so they survive a re-index and follow a moved file (a move keeps the row).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from vitdex.db.models import Base, BigId, utcnow

__all__ = ["Head", "HeadLabel", "LabelSource"]


class LabelSource(enum.StrEnum):
    """Where a photo's label under a head came from."""

    PREDICTED = "predicted"  # the head's own prediction; replaced when it is applied again
    CORRECTED = "corrected"  # set by a person; never overwritten by a prediction


class Head(Base):
    """A linear classifier over one space's vectors, with its report."""

    __tablename__ = "heads"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: Lower-case letters, digits, ``-`` and ``_``: it is written in filters as HEAD:LABEL.
    name: Mapped[str] = mapped_column(String(64), unique=True)
    space_id: Mapped[int] = mapped_column(ForeignKey("spaces.id", ondelete="CASCADE"))
    #: The model the space was embedded with when the head was trained (copied, so a
    #: space re-created under another model is refused by name).
    model_id: Mapped[str] = mapped_column(Text)
    model_revision: Mapped[str] = mapped_column(String(128))
    #: ``tags`` or ``folders``, and what they named (tag names, or the folder).
    source: Mapped[str] = mapped_column(String(16))
    source_spec: Mapped[dict[str, Any]]
    #: Class names in the order of the weight rows.
    classes: Mapped[list[str]] = mapped_column(JSON)
    #: float32 little-endian: ``len(classes) × dim`` weights, then ``len(classes)`` biases.
    weights: Mapped[bytes] = mapped_column(LargeBinary)
    dim: Mapped[int]
    #: Held-out accuracy, per-class precision / recall / support, confusion matrix, counts.
    report: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    trained_at: Mapped[datetime] = mapped_column(default=utcnow)
    applied_at: Mapped[datetime | None] = mapped_column(default=None)


class HeadLabel(Base):
    """A photo's label under one head, with how sure the head is."""

    __tablename__ = "head_labels"
    __table_args__ = (
        # "photos labelled L by head H" (filters, counts) reads this index alone.
        Index("ix_head_labels_head_label_image", "head_id", "label", "image_id"),
        # "the head's least certain photos" walks this index from the bottom.
        Index("ix_head_labels_head_margin", "head_id", "margin"),
    )

    head_id: Mapped[int] = mapped_column(
        ForeignKey("heads.id", ondelete="CASCADE"), primary_key=True
    )
    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    label: Mapped[str] = mapped_column(String(128))
    #: The predicted probability of ``label`` (1.0 for a correction).
    confidence: Mapped[float] = mapped_column(Float)
    #: Top probability minus the runner-up's: small means the head hesitated.
    margin: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(16), default=LabelSource.PREDICTED.value)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
