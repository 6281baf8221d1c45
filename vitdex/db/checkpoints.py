"""Every SQL statement about registered checkpoints, and the dataset hash they record.

Functions take a :class:`~sqlalchemy.orm.Session` and leave committing to the caller.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vitdex.db.models import Checkpoint, Dataset, DatasetItem, Image, is_id, iso
from vitdex.db.rows import get_row
from vitdex.errors import ConfigError, ConflictError, NotFoundError

#: What a checkpoint's ``status`` can be.
STATUSES = ("ready", "invalid")
#: What a registered file is: a whole model, or a LoRA (a difference to its base).
KINDS = ("checkpoint", "lora")


def create_checkpoint(
    session: Session,
    *,
    name: str,
    base_model: str,
    version: str,
    path: str,
    sha256: str,
    size_bytes: int,
    file_format: str,
    half: bool = False,
    run_id: int | None = None,
    dataset_id: int | None = None,
    dataset_hash: str | None = None,
    config: Mapping[str, Any] | None = None,
    steps: int | None = None,
    final_loss: float | None = None,
    yaml_path: str | None = None,
    sample_path: str | None = None,
    status: str = "ready",
    kind: str = "checkpoint",
    source_id: int | None = None,
    lora_rank: int | None = None,
) -> Checkpoint:
    """A new checkpoint row (flushed, not committed); a taken name is a :class:`ConflictError`.

    A ``lora`` row names the checkpoint it was extracted from (``source_id``) and its rank.
    """
    if status not in STATUSES:
        raise ConfigError(f"unknown checkpoint status {status!r} (one of: {', '.join(STATUSES)})")
    _check_kind(kind)
    if name_taken(session, name):
        raise ConflictError(f"a checkpoint named {name!r} is already registered")
    checkpoint = Checkpoint(
        name=name,
        run_id=run_id,
        base_model=base_model,
        version=version,
        dataset_id=dataset_id,
        dataset_hash=dataset_hash,
        config=dict(config or {}),
        steps=steps,
        final_loss=final_loss,
        path=path,
        sha256=sha256,
        size_bytes=size_bytes,
        format=file_format,
        half=half,
        yaml_path=yaml_path,
        sample_path=sample_path,
        status=status,
        kind=kind,
        source_id=source_id,
        lora_rank=lora_rank,
    )
    session.add(checkpoint)
    session.flush()
    return checkpoint


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown checkpoint kind {kind!r} (one of: {', '.join(KINDS)})")


def name_taken(session: Session, name: str) -> bool:
    """Whether a checkpoint with ``name`` is registered."""
    return session.scalar(select(Checkpoint.id).where(Checkpoint.name == name)) is not None


def get_checkpoint(session: Session, checkpoint_id: int) -> Checkpoint:
    """The checkpoint ``checkpoint_id``; :class:`NotFoundError` when there is none."""
    return get_row(session, Checkpoint, checkpoint_id, "checkpoint")


def get_checkpoint_by_name(session: Session, name: str) -> Checkpoint:
    """The checkpoint called ``name``; :class:`NotFoundError` when there is none."""
    checkpoint = session.scalar(select(Checkpoint).where(Checkpoint.name == name))
    if checkpoint is None:
        raise NotFoundError(f"no checkpoint named {name!r}")
    return checkpoint


def find_by_path(session: Session, path: str) -> Checkpoint | None:
    """The checkpoint registered with file ``path`` (the newest, should there be several)."""
    return session.scalars(
        select(Checkpoint).where(Checkpoint.path == path).order_by(Checkpoint.id.desc())
    ).first()


def find_checkpoint(session: Session, ref: str | int) -> Checkpoint:
    """A checkpoint by id (an int, or a string of digits) or by name.

    Names cannot be all digits (see :func:`vitdex.training.registry.check_name`), so the
    two never clash.
    """
    if isinstance(ref, int):
        return get_checkpoint(session, ref)
    text = ref.strip()
    if is_id(text):
        return get_checkpoint(session, int(text))
    return get_checkpoint_by_name(session, text)


def list_checkpoints(
    session: Session,
    *,
    status: str | None = None,
    run_id: int | None = None,
    kind: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[Checkpoint], int]:
    """Checkpoints newest first, optionally of one status, run or kind, with the total
    that match."""
    if status is not None and status not in STATUSES:
        raise ConfigError(f"unknown checkpoint status {status!r} (one of: {', '.join(STATUSES)})")
    if kind is not None:
        _check_kind(kind)
    stmt = select(Checkpoint)
    count = select(func.count()).select_from(Checkpoint)
    if status is not None:
        stmt, count = (
            stmt.where(Checkpoint.status == status),
            count.where(Checkpoint.status == status),
        )
    if run_id is not None:
        stmt, count = (
            stmt.where(Checkpoint.run_id == run_id),
            count.where(Checkpoint.run_id == run_id),
        )
    if kind is not None:
        stmt, count = stmt.where(Checkpoint.kind == kind), count.where(Checkpoint.kind == kind)
    total = int(session.scalar(count) or 0)
    rows = list(session.scalars(stmt.order_by(Checkpoint.id.desc()).limit(limit).offset(offset)))
    return rows, total


def paths_in_use(session: Session, paths: list[str], *, except_id: int) -> set[str]:
    """Which of ``paths`` another checkpoint row still names (file, YAML or sample)."""
    if not paths:
        return set()
    used: set[str] = set()
    for column in (Checkpoint.path, Checkpoint.yaml_path, Checkpoint.sample_path):
        used.update(
            p
            for p in session.scalars(
                select(column).where(column.in_(paths), Checkpoint.id != except_id)
            )
            if p is not None
        )
    return used


def delete_checkpoint(session: Session, checkpoint_id: int) -> Checkpoint:
    """Remove the row (not its files) and return it as it was."""
    checkpoint = get_checkpoint(session, checkpoint_id)
    session.delete(checkpoint)
    session.flush()
    return checkpoint


def dataset_image_hash(session: Session, dataset_id: int) -> str:
    """sha256 over the sorted sha256s of the dataset's included instance images.

    The hex digests are sorted and joined with newlines, so the hash names the exact set
    of image contents (duplicates counted) whatever their paths or order in the set.
    """
    if session.get(Dataset, dataset_id) is None:
        raise NotFoundError(f"no dataset with id {dataset_id}")
    image_ids = session.scalars(
        select(DatasetItem.image_id).where(
            DatasetItem.dataset_id == dataset_id,
            DatasetItem.role == "instance",
            DatasetItem.included.is_(True),
        )
    ).all()
    return images_hash(session, list(image_ids))


def images_hash(session: Session, image_ids: Sequence[int]) -> str:
    """sha256 over the sorted sha256s of ``image_ids`` (see :func:`dataset_image_hash`)."""
    rows = session.execute(select(Image.id, Image.sha256).where(Image.id.in_(image_ids))).all()
    missing = [image_id for image_id, digest in rows if not digest]
    missing += sorted(set(image_ids) - {image_id for image_id, _ in rows})
    if missing:
        raise ConfigError(f"images without a sha256 ({missing[:5]}); index them again")
    by_id = dict(rows)
    digests = sorted(str(by_id[i]) for i in image_ids)
    return hashlib.sha256("\n".join(digests).encode("ascii")).hexdigest()


def checkpoint_to_dict(checkpoint: Checkpoint) -> dict[str, Any]:
    """The JSON form of a checkpoint row."""
    return {
        "id": checkpoint.id,
        "name": checkpoint.name,
        "status": checkpoint.status,
        "kind": checkpoint.kind,
        "source_id": checkpoint.source_id,
        "lora_rank": checkpoint.lora_rank,
        "base_model": checkpoint.base_model,
        "version": checkpoint.version,
        "run_id": checkpoint.run_id,
        "dataset_id": checkpoint.dataset_id,
        "dataset_hash": checkpoint.dataset_hash,
        "steps": checkpoint.steps,
        "final_loss": checkpoint.final_loss,
        "path": checkpoint.path,
        "sha256": checkpoint.sha256,
        "size_bytes": checkpoint.size_bytes,
        "format": checkpoint.format,
        "half": checkpoint.half,
        "yaml_path": checkpoint.yaml_path,
        "sample_path": checkpoint.sample_path,
        "config": checkpoint.config,
        "created_at": iso(checkpoint.created_at),
    }
