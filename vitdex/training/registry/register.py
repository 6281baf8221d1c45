"""Convert, validate, sample and register single-file checkpoints.

A conversion is registered only after :func:`~vitdex.training.convert.validate_checkpoint`
has run on the written file. A file that fails validation is still registered, with status
``invalid`` and no sample, so that it can be inspected and later deleted with its files;
the call then raises :class:`~vitdex.training.convert.CheckpointValidationError`. When the
conversion or the validation breaks for any other reason, the files written are removed
and nothing is registered.

torch and diffusers are imported only inside the functions that need them (here, the
device check), so importing the registry (as the API does to list and delete
checkpoints) loads neither.
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
from vitdex.training.convert import (
    CheckpointValidationError,
    check_version,
    convert,
    native_resolution,
    sha256_file,
    validate_checkpoint,
)
from vitdex.training.registry.catalog import open_sessions
from vitdex.training.registry.samples import (
    DEFAULT_SAMPLE_STEPS,
    check_sample,
    sample_path_for,
    sample_prompt,
    write_sample,
)

__all__ = [
    "Check",
    "Provenance",
    "check_name",
    "convert_and_register",
    "register_file",
]

log = logging.getLogger(__name__)

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
    #: False: no grid is rendered and the row's sample_path stays NULL.
    sample: bool = True


def _remove(paths: list[Path | None]) -> None:
    """Delete the files written so far (those that exist)."""
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
    from vitdex.devices import resolve_device

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
    if check.sample:
        check_sample(source, size=check.sample_size, steps=check.sample_steps)
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
    from vitdex.devices import resolve_device

    device = str(resolve_device(check.device))
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
    sample: Path | None = None
    if check.sample:
        say("rendering the sample grid")
        sample = write_sample(
            report.pipeline,
            sample_path_for(path),
            prompt=sample_prompt(check.sample_prompt, fields["config"]),
            steps=check.sample_steps,
            size=check.sample_size or native_resolution(source),
            name=name,
            sha256=digest,
        )
    try:
        with sessions() as session:
            row = db.create_checkpoint(
                session, **fields, sample_path=str(sample) if sample else None, status="ready"
            )
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
    from vitdex.devices import resolve_device

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
    if check.sample:  # a bad size or step count is refused before anything is written
        check_sample(source, size=check.sample_size, steps=check.sample_steps)
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
