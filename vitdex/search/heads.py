"""Heads: linear classifiers trained on a space's stored vectors, and what they label.

INTERFACE (filled in by the heads work): the API, CLI and jobs call only these names.
A head is trained from tags (one class per tag) or from a folder (one class per direct
subfolder) on the vectors already in the store, so training and labelling a whole library
need no forward pass. It remembers its space, model and revision and refuses any other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import Settings

__all__ = [
    "apply_head",
    "correct_label",
    "delete_head",
    "get_head",
    "head_labels",
    "list_heads",
    "queue_head_job",
    "train_head",
]

Progress = Callable[[int, int], None]


def train_head(
    settings: Settings,
    sessions: sessionmaker[Session],
    name: str,
    *,
    space: str | None = None,
    from_tags: Sequence[str] = (),
    from_folder: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    replace: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Fit head ``name`` and store it with its report; returns :func:`get_head`'s dict.

    The dict: ``id, name, space, model_id, model_revision, source, source_spec, classes,
    report {accuracy, classes: [{name, precision, recall, f1, support}], confusion
    (rows true, columns predicted, in ``classes`` order), train_count, test_count,
    notes}, created_at, trained_at, applied_at, label_counts {label: n}, labelled``.
    Raises ConfigError (bad name, too few examples, unknown tag/folder/space),
    ConflictError (name taken and not ``replace``).
    """
    raise NotImplementedError


def apply_head(
    settings: Settings,
    sessions: sessionmaker[Session],
    name: str,
    *,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Label every photo with a vector in the head's space (corrections are kept);
    returns ``{"head", "labelled", "corrections_kept", "label_counts", "seconds"}``.
    Raises ConfigError when the space's model is no longer the head's."""
    raise NotImplementedError


def list_heads(sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    """Every head, as :func:`get_head` returns it, by name."""
    raise NotImplementedError


def get_head(sessions: sessionmaker[Session], name: str) -> dict[str, Any]:
    """One head (see :func:`train_head`); NotFoundError when there is none."""
    raise NotImplementedError


def delete_head(sessions: sessionmaker[Session], name: str) -> None:
    """Delete a head and its labels; NotFoundError when there is none."""
    raise NotImplementedError


def head_labels(
    sessions: sessionmaker[Session],
    name: str,
    *,
    label: str | None = None,
    order: str = "uncertain",
    source: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> dict[str, Any]:
    """A page of the head's labelled photos: ``{"head", "total", "items": [{image_id,
    path, label, confidence, margin, source, runner_up}]}``. ``order``: ``uncertain``
    (smallest margin first), ``confident`` (largest first) or ``recent``."""
    raise NotImplementedError


def correct_label(
    sessions: sessionmaker[Session], name: str, image_id: int, label: str | None
) -> dict[str, Any]:
    """Set a photo's label under a head by hand (kept through every later apply); ``None``
    removes the correction so the next apply predicts it again. Returns the photo's item
    as in :func:`head_labels`. ConfigError for a label the head does not have."""
    raise NotImplementedError


def queue_head_job(
    sessions: sessionmaker[Session], kind: str, params: dict[str, Any]
) -> dict[str, Any]:
    """A queued job row of kind ``head-train`` or ``head-apply`` (committed; the caller
    submits it). Arguments are checked now, so a bad one is a 4xx, not a failed job."""
    raise NotImplementedError
