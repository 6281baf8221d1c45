"""Convert, validate, sample and register single-file checkpoints; list, show, delete them.

A conversion is registered only after :func:`~vitdex.training.convert.validate_checkpoint`
has run on the written file. A file that fails validation is still registered, with status
``invalid`` and no sample, so that it can be inspected and later deleted with its files;
the call then raises :class:`~vitdex.training.convert.CheckpointValidationError`. When the
conversion or the validation breaks for any other reason, the files written are removed
and nothing is registered.

This module imports torch and diffusers only inside the functions that convert, so the API
can list and delete checkpoints without loading either.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import Settings
from vitdex.db import checkpoints as db
from vitdex.db.models import Checkpoint, JobState
from vitdex.errors import ConfigError, ConflictError, NotFoundError

__all__ = [
    "SAMPLE_GRID",
    "SAMPLE_SEEDS",
    "Check",
    "Provenance",
    "check_name",
    "convert_and_register",
    "delete_checkpoint",
    "list_checkpoints",
    "open_sessions",
    "register_file",
    "sample_file",
    "sample_path_for",
    "show_checkpoint",
]

log = logging.getLogger(__name__)

#: Seeds of the registered sample grid (one image each) and the grid's columns x rows.
SAMPLE_SEEDS = (0, 1, 2, 3)
SAMPLE_GRID = (2, 2)
#: Prompt of the sample grid when neither the caller nor the training config gives one.
DEFAULT_SAMPLE_PROMPT = "a photo"
DEFAULT_SAMPLE_STEPS = 20
SAMPLE_GUIDANCE = 7.5

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Provenance:
    """Where a checkpoint comes from, as its registry row records it."""

    base_model: str | None = None
    run_id: int | None = None
    dataset_id: int | None = None
    #: sha256 over the dataset's included photos' sha256s; computed when not given.
    dataset_hash: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    steps: int | None = None
    final_loss: float | None = None


@dataclass(frozen=True)
class Check:
    """How a written file is loaded back to validate it, and its sample grid rendered."""

    device: str = "cpu"
    #: Defaults to the training config's instance prompt, else "a photo".
    sample_prompt: str | None = None
    sample_steps: int = DEFAULT_SAMPLE_STEPS
    #: Defaults to the base's native resolution.
    sample_size: int | None = None


def open_sessions(target: Settings | sessionmaker[Session]) -> sessionmaker[Session]:
    """Sessions of the catalog: the factory itself, or the process's (migrated) one for
    the settings' database."""
    if isinstance(target, Settings):
        from vitdex.db.jobs import catalog_sessions

        return catalog_sessions(target.storage.resolved_database_url)
    return target


def sample_path_for(checkpoint_file: Path) -> Path:
    """Where the sample grid of a checkpoint goes: ``<stem>.preview.png`` beside the file,
    the name AUTOMATIC1111 shows as the checkpoint's card picture."""
    return checkpoint_file.with_name(checkpoint_file.stem + ".preview.png")


def _grid(images: list[Any], columns: int, rows: int) -> Any:
    from PIL import Image

    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height))
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * width, (i // columns) * height))
    return grid


def _write_sample(
    pipe: Any,
    target: Path,
    *,
    prompt: str,
    steps: int,
    size: int,
    name: str,
    sha256: str,
) -> Path:
    from PIL.PngImagePlugin import PngInfo

    from vitdex.training.convert import atomic_path, render

    images = render(
        pipe,
        prompt=prompt,
        seeds=list(SAMPLE_SEEDS),
        steps=steps,
        size=size,
        guidance=SAMPLE_GUIDANCE,
        output_type="pil",
    )
    grid = _grid(list(images), *SAMPLE_GRID)
    info = PngInfo()
    sampler = type(pipe.scheduler).__name__.removesuffix("Scheduler")
    # AUTOMATIC1111's "parameters" chunk: its PNG Info tab reads the settings back.
    info.add_text(
        "parameters",
        f"{prompt}\nSteps: {steps}, Sampler: {sampler}, CFG scale: {SAMPLE_GUIDANCE}, "
        f"Seed: {SAMPLE_SEEDS[0]}, Size: {size}x{size}, Model hash: {sha256[:10]}, "
        f"Model: {name}, Grid: {SAMPLE_GRID[0]}x{SAMPLE_GRID[1]} seeds "
        f"{', '.join(str(s) for s in SAMPLE_SEEDS)}",
    )
    with atomic_path(target) as tmp:
        grid.save(tmp, format="PNG", pnginfo=info)
    return target


def _sample_prompt(explicit: str | None, config: Mapping[str, Any]) -> str:
    if explicit:
        return explicit
    for key in ("instance_prompt", "prompt"):
        value = config.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return DEFAULT_SAMPLE_PROMPT


def _remove(paths: list[Path | None]) -> None:
    for path in paths:
        if path is not None:
            with suppress(FileNotFoundError):
                path.unlink()


def register_file(
    target: Settings | sessionmaker[Session],
    path: Path,
    source: Path,
    *,
    name: str,
    version: str | None = None,
    half: bool = False,
    yaml_path: Path | None = None,
    origin: Provenance = Provenance(),
    check: Check = Check(),
    progress: Progress | None = None,
) -> Checkpoint:
    """Validate the single file ``path`` against the diffusers folder ``source`` and register it.

    The file is hashed (sha256) as it is now. A valid file gets a fixed-seed sample grid
    beside it and status ``ready``; an invalid one is registered as ``invalid`` (file kept,
    no sample) and :class:`CheckpointValidationError` is raised naming its id.
    """
    from vitdex.training.convert import check_version, resolve_device, sha256_file

    say = progress or (lambda _msg: None)
    check_name(name)
    resolve_device(check.device)
    sessions = open_sessions(target)
    path = path.expanduser().resolve()
    source = source.expanduser().resolve()
    if not path.is_file():
        raise NotFoundError(f"no checkpoint file at {path}")
    if path.suffix.lower() not in (".safetensors", ".ckpt"):
        raise ConfigError(f"{path} is neither .safetensors nor .ckpt")
    version = check_version(source, version)
    with sessions() as session:
        if db.name_taken(session, name):
            raise ConflictError(f"a checkpoint named {name!r} is already registered")
    say("hashing the file")
    return _validate_and_register(
        sessions,
        path,
        source,
        name=name,
        version=version,
        half=half,
        yaml_path=yaml_path,
        digest=sha256_file(path),
        origin=origin,
        check=check,
        say=say,
    )


def _validate_and_register(
    sessions: sessionmaker[Session],
    path: Path,
    source: Path,
    *,
    name: str,
    version: str,
    half: bool,
    yaml_path: Path | None,
    digest: str,
    origin: Provenance,
    check: Check,
    say: Progress,
) -> Checkpoint:
    """Register the checked, hashed file ``path``: ``invalid`` when validation fails, else
    ``ready`` with its sample grid."""
    from vitdex.training.convert import (
        CheckpointValidationError,
        native_resolution,
        resolve_device,
        validate_checkpoint,
    )

    device = resolve_device(check.device)
    fields: dict[str, Any] = {
        "name": name,
        "base_model": origin.base_model or str(source),
        "version": version,
        "path": str(path),
        "sha256": digest,
        "size_bytes": path.stat().st_size,
        "file_format": path.suffix.lower().lstrip("."),
        "half": half,
        "run_id": origin.run_id,
        "dataset_id": origin.dataset_id,
        "dataset_hash": origin.dataset_hash,
        "config": dict(origin.config),
        "steps": origin.steps,
        "final_loss": origin.final_loss,
        "yaml_path": str(yaml_path) if yaml_path else None,
    }
    try:
        report = validate_checkpoint(
            path,
            source,
            version=version,
            half=half,
            device=device,
            progress=say,
        )
    except CheckpointValidationError as exc:
        with sessions() as session:
            row = db.create_checkpoint(session, **fields, status="invalid")
            session.commit()
        raise CheckpointValidationError(
            f"checkpoint {name!r} (id {row.id}) failed validation and is registered as "
            f"invalid; the file is kept at {path}: {exc.message}"
        ) from exc
    say("rendering the sample grid")
    sample = sample_path_for(path)
    _write_sample(
        report.pipeline,
        sample,
        prompt=_sample_prompt(check.sample_prompt, fields["config"]),
        steps=check.sample_steps,
        size=check.sample_size or native_resolution(source),
        name=name,
        sha256=digest,
    )
    try:
        with sessions() as session:
            row = db.create_checkpoint(session, **fields, sample_path=str(sample), status="ready")
            session.commit()
    except Exception:
        _remove([sample])
        raise
    return row


def _run_source(
    sessions: sessionmaker[Session], run_id: int
) -> tuple[Path, str | None, Provenance]:
    """The diffusers folder of a finished training run and what the run says about it."""
    from vitdex.db import training

    with sessions() as session:
        run = training.get_run(session, run_id)
        folder = Path(run.output_dir) / "final"
        # final/ appears (atomically) only when training completed; the run's own job
        # converts it while the run still reads "running".
        if run.state != JobState.SUCCEEDED and not (folder / "model_index.json").is_file():
            raise ConflictError(
                f"training run {run_id} is {run.state} and has not finished training; "
                "convert it once it has"
            )
        version = run.version
        facts = Provenance(
            base_model=run.base_model,
            run_id=run_id,
            dataset_id=run.dataset_id,
            config=dict(run.config or {}),
            steps=run.step,
            final_loss=run.loss,
        )
    if not (folder / "model_index.json").is_file():
        raise NotFoundError(f"training run {run_id} has no final model at {folder}")
    return folder, version, facts


#: A registry name doubles as a file name: no separators, no leading dot, printable.
_NAME = re.compile(r"^[^./\\\x00-\x1f][^/\\\x00-\x1f]{0,255}$")


def check_name(name: str) -> str:
    """A checkpoint name that is safe as a file name and cannot be mistaken for an id."""
    if not _NAME.match(name) or name != name.strip():
        raise ConfigError(
            f"invalid checkpoint name {name!r}: use up to 256 printable characters, "
            "no slashes, not starting with a dot or a space"
        )
    if name.isdigit():
        raise ConfigError(f"a checkpoint name cannot be all digits ({name!r} reads as an id)")
    return name


def _default_name(source: Path, run_id: int | None) -> str:
    if run_id is not None:
        return f"run-{run_id}"
    # A run's folder is ".../<run>/final"; the run's folder says more than "final".
    return source.parent.name if source.name == "final" and source.parent.name else source.name


def convert_and_register(
    target: Settings | sessionmaker[Session],
    source: Path | None = None,
    *,
    out: Path | None = None,
    name: str | None = None,
    half: bool = False,
    fmt: str = "safetensors",
    run_id: int | None = None,
    version: str | None = None,
    origin: Provenance = Provenance(),
    check: Check = Check(),
    progress: Progress | None = None,
) -> Checkpoint:
    """Convert a diffusers folder (or training run ``run_id``'s ``final/``) to one file,
    validate it, render its sample grid and register it.

    With ``run_id``, the run supplies base model, version, dataset, config, steps and final
    loss (``version`` and the fields of ``origin`` that are set win). The dataset hash is
    computed from the dataset's included instance images when not given. ``out`` defaults to
    ``$VITDEX_HOME/checkpoints/<name>.<fmt>`` (settings needed); ``name`` to the file's stem.
    Returns the registered row; see the module docstring for failures.
    """
    from vitdex.training.convert import CheckpointValidationError, convert, resolve_device

    say = progress or (lambda _msg: None)
    sessions = open_sessions(target)
    if run_id is not None:
        run_folder, run_version, facts = _run_source(sessions, run_id)
        source = source or run_folder
        version = version or run_version
        # What the caller set wins over what the run says.
        origin = replace(facts, **{k: v for k, v in vars(origin).items() if v not in (None, {})})
    if source is None:
        raise ConfigError("give a diffusers folder or a training run id")
    source = source.expanduser().resolve()
    if not source.is_dir():
        raise NotFoundError(f"no diffusers folder at {source}")
    if fmt not in ("safetensors", "ckpt"):
        raise ConfigError(f"unknown format {fmt!r}; choose safetensors or ckpt")
    if out is None:
        if not isinstance(target, Settings):
            raise ConfigError("give the output file (no settings to find VITDEX_HOME)")
        stem = check_name(name or _default_name(source, run_id))
        out = target.storage.home / "checkpoints" / f"{stem}.{fmt}"
    out = out.expanduser().resolve()
    name = check_name(name or out.stem)

    with sessions() as session:
        if db.name_taken(session, name):
            raise ConflictError(f"a checkpoint named {name!r} is already registered")
        if origin.dataset_hash is None and origin.dataset_id is not None:
            try:
                origin = replace(
                    origin, dataset_hash=db.dataset_image_hash(session, origin.dataset_id)
                )
            except NotFoundError:
                log.warning("dataset %s is gone; registering without its hash", origin.dataset_id)
                origin = replace(origin, dataset_id=None)

    resolve_device(check.device)  # an unusable device must not mark a file invalid
    say(f"converting {source}")
    result = convert(source, out, version=version, half=half, fmt=fmt, title=name)
    written: list[Path | None] = [result.path, result.yaml_path]
    try:
        # convert() hashed the file as it wrote it and checked version and name.
        return _validate_and_register(
            sessions,
            result.path,
            source,
            name=name,
            version=result.version,
            half=half,
            yaml_path=result.yaml_path,
            digest=result.sha256,
            origin=origin,
            check=check,
            say=say,
        )
    except CheckpointValidationError:
        raise  # registered as invalid; its files stay for inspection
    except BaseException:
        _remove(written)
        raise


# --------------------------------------------------------------------------- reading, deleting


def list_checkpoints(
    target: Settings | sessionmaker[Session],
    *,
    status: str | None = None,
    run_id: int | None = None,
    limit: int = 100,
    offset: int = 0,
) -> dict[str, Any]:
    """``{"total", "limit", "offset", "checkpoints": [...]}``, newest first."""
    with open_sessions(target)() as session:
        rows, total = db.list_checkpoints(
            session, status=status, run_id=run_id, limit=limit, offset=offset
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
