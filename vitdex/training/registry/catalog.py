"""Reading and deleting registered checkpoints (no torch, no diffusers): list, show, the
sample grid's file, unregister with or without the files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import Settings
from vitdex.db import checkpoints as db
from vitdex.db.models import Checkpoint
from vitdex.errors import NotFoundError

__all__ = [
    "delete_checkpoint",
    "list_checkpoints",
    "open_sessions",
    "sample_file",
    "show_checkpoint",
]

log = logging.getLogger(__name__)


def open_sessions(target: Settings | sessionmaker[Session]) -> sessionmaker[Session]:
    """Sessions of the catalog: the factory itself, or the process's (migrated) one for
    the settings' database."""
    if isinstance(target, Settings):
        from vitdex.db.jobs import catalog_sessions

        return catalog_sessions(target.storage.resolved_database_url)
    return target


def list_checkpoints(
    target: Settings | sessionmaker[Session],
    *,
    status: str | None = None,
    run_id: int | None = None,
    kind: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> dict[str, Any]:
    """``{"total", "limit", "offset", "checkpoints": [...]}``, newest first (``kind``:
    only ``checkpoint`` or only ``lora`` rows)."""
    with open_sessions(target)() as session:
        rows, total = db.list_checkpoints(
            session, status=status, run_id=run_id, kind=kind, limit=limit, offset=offset
        )
        return {
            "total": total,
            "limit": limit,
            "offset": offset,
            "checkpoints": [db.checkpoint_to_dict(row) for row in rows],
        }


def show_checkpoint(target: Settings | sessionmaker[Session], ref: str | int) -> dict[str, Any]:
    """One checkpoint (by id or name) with whether its files are still where recorded."""
    with open_sessions(target)() as session:
        data = db.checkpoint_to_dict(db.find_checkpoint(session, ref))
    data["files_present"] = {
        key: Path(data[key]).is_file() if data[key] else None
        for key in ("path", "yaml_path", "sample_path")
    }
    return data


def sample_file(target: Settings | sessionmaker[Session], ref: str | int) -> Path:
    """The sample grid PNG of a checkpoint; :class:`NotFoundError` when it has none (any more)."""
    with open_sessions(target)() as session:
        row = db.find_checkpoint(session, ref)
        recorded = row.sample_path
        label = f"checkpoint {row.id}"
    if not recorded:
        raise NotFoundError(f"{label} has no sample grid (it failed validation)")
    path = Path(recorded)
    if not path.is_file():
        raise NotFoundError(f"the sample grid of {label} is gone from {path}")
    return path


def _own_files(row: Checkpoint) -> list[Path]:
    """The checkpoint file and, when they sit beside it with its stem, its YAML and sample."""
    main = Path(row.path)
    files = [main]
    for extra in (row.yaml_path, row.sample_path):
        if not extra:
            continue
        candidate = Path(extra)
        # Only companions named after the file, in its folder: nothing else is ours to delete.
        if candidate.parent == main.parent and candidate.name.startswith(main.stem + "."):
            files.append(candidate)
        else:
            log.warning("not deleting %s: it is not beside %s", candidate, main)
    return files


def delete_checkpoint(
    target: Settings | sessionmaker[Session], ref: str | int, *, files: bool = False
) -> dict[str, Any]:
    """Unregister a checkpoint; with ``files``, also delete its file, YAML and sample grid.

    Only those recorded paths are touched, only regular files, and none that another
    registered checkpoint still names. Returns the removed row with ``deleted_files`` and
    ``kept_files`` (``{path: why}``).
    """
    sessions = open_sessions(target)
    with sessions() as session:
        row = db.find_checkpoint(session, ref)
        candidates = _own_files(row) if files else []
        in_use = db.paths_in_use(session, [str(p) for p in candidates], except_id=row.id)
        data = db.checkpoint_to_dict(db.delete_checkpoint(session, row.id))
        session.commit()
    deleted: list[str] = []
    kept: dict[str, str] = {}
    for path in candidates:
        if str(path) in in_use:
            kept[str(path)] = "another checkpoint uses it"
        elif path.is_symlink() or not path.is_file():
            kept[str(path)] = "not a regular file" if path.exists() else "already gone"
        else:
            try:
                path.unlink()
                deleted.append(str(path))
            except OSError as exc:
                kept[str(path)] = str(exc)
    data["deleted_files"] = deleted
    data["kept_files"] = kept
    return data
