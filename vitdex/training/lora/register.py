"""Extract a LoRA from a checkpoint and register it beside its source.

The registry row (kind ``lora``) names its source checkpoint, rank, base model and
version, copies the source's run, dataset and dataset hash, and records in ``config``
how much of the difference the file keeps. torch is imported only by the extraction
itself, so the API can check and queue an extraction without it.
"""

from __future__ import annotations

import json
import logging
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import Settings
from vitdex.db import checkpoints as db
from vitdex.db.models import Checkpoint
from vitdex.errors import ConfigError, ConflictError, NotFoundError
from vitdex.training.lora.extract import MAX_RANK, Count, Say, extract_lora
from vitdex.training.registry import check_name, open_sessions

__all__ = [
    "JOB_KIND",
    "LoraSource",
    "enqueue_lora_extract",
    "extract_and_register",
    "resolve_source",
]

log = logging.getLogger(__name__)

#: The job kind of an extraction run by a queue.
JOB_KIND = "lora-extract"


@dataclass(frozen=True)
class LoraSource:
    """What is extracted from: a file or folder, and its registry row when it has one."""

    path: Path
    row: dict[str, Any] | None

    @property
    def label(self) -> str:
        """A name for messages and the default LoRA name."""
        if self.row is not None:
            return str(self.row["name"])
        return self.path.stem if self.path.is_file() else self.path.name


def _check_rank(rank: int | None, what: str) -> None:
    if rank is not None and not 1 <= rank <= MAX_RANK:
        raise ConfigError(f"{what} must be between 1 and {MAX_RANK}, not {rank}")


def resolve_source(sessions: sessionmaker[Session], ref: str | int) -> LoraSource:
    """A registered checkpoint (id or name), or a single file / diffusers folder on disk
    (with its row when a checkpoint is registered at that path). A LoRA is refused."""
    text = str(ref).strip()
    candidate = Path(text).expanduser()
    with sessions() as session:
        local = isinstance(ref, str) and ("/" in text or candidate.exists())
        if local and not candidate.exists():
            raise NotFoundError(f"no checkpoint file or folder at {candidate}")
        if local:
            path = candidate.resolve()
            found = db.find_by_path(session, str(path))
            row = db.checkpoint_to_dict(found) if found is not None else None
        else:
            try:
                row = db.checkpoint_to_dict(db.find_checkpoint(session, ref))
            except NotFoundError:
                raise NotFoundError(
                    f"no checkpoint {text!r}: give a registered id or name, or a file"
                ) from None
            path = Path(row["path"])
    if row is not None and row["kind"] == "lora":
        raise ConfigError(f"checkpoint {row['id']} {row['name']!r} is a LoRA already")
    if not path.exists():
        raise NotFoundError(f"the file of checkpoint {text!r} is gone from {path}")
    return LoraSource(path=path, row=row)


def _check_base(base: str) -> None:
    """Refuse now a registered base that is a local path no longer there (a job would
    only fail later); hub ids are checked when loaded."""
    from vitdex.training.bases import base_kind

    try:
        base_kind(base)
    except NotFoundError:
        raise ConfigError(
            f"the checkpoint's registered base model {base!r} is gone; extract it with "
            "`vitdex lora extract --base`"
        ) from None


def _default_out(target: Settings | sessionmaker[Session], name: str) -> Path:
    if not isinstance(target, Settings):
        raise ConfigError("give the output file (no settings to find VITDEX_HOME)")
    return target.storage.home / "loras" / f"{name}.safetensors"


def extract_and_register(
    target: Settings | sessionmaker[Session],
    ref: str | int,
    *,
    rank: int,
    base: str | None = None,
    base_config: str | None = None,
    conv_rank: int | None = None,
    text_encoder: bool = True,
    name: str | None = None,
    out: Path | None = None,
    half: bool = False,
    device: str = "cpu",
    say: Say | None = None,
    count: Count | None = None,
) -> Checkpoint:
    """Extract the LoRA of checkpoint ``ref`` (see :func:`resolve_source`) at ``rank`` and
    register it as kind ``lora`` with its source.

    ``base`` defaults to the source's registered base model. ``name`` defaults to
    ``<source>-lora<rank>``; ``out`` to ``$VITDEX_HOME/loras/<name>.safetensors``. An
    existing file is never overwritten. When registering fails the file is removed.
    """
    _check_rank(rank, "the rank")
    _check_rank(conv_rank, "the conv rank")
    sessions = open_sessions(target)
    source = resolve_source(sessions, ref)
    row = source.row or {}
    base = base or row.get("base_model")
    if not base:
        raise ConfigError(f"{source.path} is not registered: give its base model (--base)")
    name = check_name(name or f"{source.label}-lora{rank}")
    out = (out or _default_out(target, name)).expanduser().resolve()
    with sessions() as session:
        if db.name_taken(session, name):
            raise ConflictError(f"a checkpoint named {name!r} is already registered")
    if out.exists():
        raise ConfigError(f"{out} exists; choose another output file or delete it first")
    source_sha = row.get("sha256")
    if source_sha is None and source.path.is_file():
        from vitdex.training.convert import sha256_file

        source_sha = sha256_file(source.path)
    result = extract_lora(
        source.path,
        base,
        out,
        rank=rank,
        conv_rank=conv_rank,
        text_encoder=text_encoder,
        title=name,
        version=row.get("version"),
        base_config=base_config,
        half=half,
        device=device,
        metadata={
            "vitdex.source_sha256": source_sha or "",
            "vitdex.source": source.label,
        },
        say=say,
        count=count,
    )
    config = {**result.config(), "source_sha256": source_sha, "half": half}
    try:
        with sessions() as session:
            created = db.create_checkpoint(
                session,
                name=name,
                base_model=str(base),
                version=result.version,
                path=str(out),
                sha256=result.sha256,
                size_bytes=result.size_bytes,
                file_format="safetensors",
                half=half,
                run_id=row.get("run_id"),
                dataset_id=row.get("dataset_id"),
                dataset_hash=row.get("dataset_hash"),
                config=config,
                steps=row.get("steps"),
                final_loss=row.get("final_loss"),
                kind="lora",
                source_id=row.get("id"),
                lora_rank=rank,
            )
            session.commit()
            return created
    except BaseException:
        with suppress(FileNotFoundError):
            out.unlink()
        raise


def enqueue_lora_extract(
    sessions: sessionmaker[Session],
    checkpoint_id: int,
    *,
    rank: int,
    conv_rank: int | None = None,
    text_encoder: bool = True,
    name: str | None = None,
) -> dict[str, Any]:
    """Check an extraction asked for over HTTP and create its queued job row (committed).

    Refused here, before anything is queued: an unknown checkpoint (404), a LoRA or a bad
    rank (400), a taken name (409). The same request twice while pending runs once.
    """
    from vitdex.db import jobs

    _check_rank(rank, "the rank")
    _check_rank(conv_rank, "the conv rank")
    source = resolve_source(sessions, checkpoint_id)
    assert source.row is not None  # looked up by id
    _check_base(str(source.row["base_model"]))
    name = check_name(name or f"{source.label}-lora{rank}")
    params = {
        "checkpoint_id": checkpoint_id,
        "rank": rank,
        "conv_rank": conv_rank,
        "text_encoder": text_encoder,
        "name": name,
    }
    with sessions() as session:
        if db.name_taken(session, name):
            raise ConflictError(f"a checkpoint named {name!r} is already registered")
        job, _ = jobs.enqueue_job_row(
            session, JOB_KIND, params, dedupe_key=json.dumps(params, sort_keys=True)
        )
        session.commit()
        return jobs.job_to_dict(job)
