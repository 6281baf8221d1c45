"""Exporting a dataset for training: square crops, caption sidecars, a kohya dataset TOML.

The folder layout is what the DreamBooth trainer reads (and what kohya-ss sd-scripts reads
through ``dataset.toml``)::

    OUT/instance/0000.png  OUT/instance/0000.txt   the included instance images, by rank
    OUT/class/0000.png     OUT/class/0000.txt      the class images (only if there are any)
    OUT/dataset.toml                               kohya-ss dataset config
    OUT/kohya/img/{repeats}_{trigger class}/       the same files in kohya's folder layout
    OUT/kohya/reg/{class repeats}_{class}/         (hard links where possible)

Each PNG is the subject's square (see :mod:`vitdex.training.crop`) at the base model's
resolution, or, for a dataset whose crop mode is ``buckets``, the subject cut at its
aspect-ratio bucket and written at that bucket's size; each ``.txt`` holds one line, the
item's caption (its own, else the dataset's prompt or class prompt). The crop box is
stored on the dataset's items, the folder on the dataset.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import Settings
from vitdex.db import datasets, repo
from vitdex.db.checkpoints import images_hash
from vitdex.errors import ConfigError, ConflictError, ForbiddenError, ImageError
from vitdex.indexer.images import read_photo
from vitdex.paths import inside, photo_roots
from vitdex.training.crop import check_resolution, face_detector, prepare_image, write_caption
from vitdex.training.kohya import (
    KOHYA_DIR,
    dataset_toml,
    safe_name,
    write_kohya_layout,
)

__all__ = [
    "CAPTION_EXTENSION",
    "CLASS_DIR",
    "INSTANCE_DIR",
    "TOML_NAME",
    "ExportResult",
    "allowed_export_dir",
    "dataset_toml",
    "default_export_dir",
    "export_dataset",
]

log = logging.getLogger(__name__)

INSTANCE_DIR = "instance"
CLASS_DIR = "class"
TOML_NAME = "dataset.toml"
#: What the export holds, for the checkpoint trained on it (image ids and their hash).
MANIFEST_NAME = "vitdex-export.json"
CAPTION_EXTENSION = ".txt"
#: Files an export writes into its image folders: 0000.png, 0000.txt, ...
_OWN_FILE = re.compile(r"^\d{4,}\.(png|txt)$")
#: How far a bucket crop may enlarge a small photo (kohya's bucket_no_upscale = false).
BUCKET_MAX_UPSCALE = 2.0

Progress = Callable[[int, int], None]


@dataclass
class ExportResult:
    """What an export wrote."""

    dataset_id: int
    name: str
    path: Path
    toml: Path
    resolution: int
    instance: int
    class_images: int
    num_repeats: int
    class_repeats: int
    #: Items whose file could not be read: image id, path, why.
    skipped: list[dict[str, Any]] = field(default_factory=list)
    #: Crop methods used: {"face": n, "saliency": n, "centre": n}.
    methods: dict[str, int] = field(default_factory=dict)
    #: sha256 over the exported instance images' sha256s (as the registry records it).
    instance_hash: str | None = None
    #: ``square`` or ``buckets`` (images at their bucket's size).
    crop_mode: str = "square"
    #: The kohya folder layout (``OUT/kohya``) and its instance and class folders.
    kohya: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "dataset_id": self.dataset_id,
            "name": self.name,
            "path": str(self.path),
            "toml": str(self.toml),
            "resolution": self.resolution,
            "instance": self.instance,
            "class": self.class_images,
            "num_repeats": self.num_repeats,
            "class_repeats": self.class_repeats,
            "skipped": self.skipped,
            "methods": self.methods,
            "instance_hash": self.instance_hash,
            "crop_mode": self.crop_mode,
            "kohya": self.kohya,
        }


def default_export_dir(settings: Settings, dataset_id: int, name: str) -> Path:
    """``VITDEX_HOME/datasets/<id>-<name as a safe folder name>``."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:64] or "dataset"
    return settings.storage.home / "datasets" / f"{dataset_id}-{safe}"


def allowed_export_dir(settings: Settings, raw: str) -> Path:
    """``raw`` resolved, if it is an absolute folder path inside VITDEX_ALLOWED_ROOTS.

    For exports asked for over HTTP. The folder need not exist; the check runs on the
    resolved path, so neither ``..`` nor a symlink can climb out of an allowed root.
    """
    if not raw or "\x00" in raw or not Path(raw).is_absolute():
        raise ConfigError(f"path must be an absolute folder path, got {raw!r}")
    roots = settings.api.allowed_roots
    if not roots:
        raise ForbiddenError(
            "no folder may be written over HTTP: set VITDEX_ALLOWED_ROOTS, or leave the path "
            "out to export under VITDEX_HOME/datasets"
        )
    try:
        resolved = Path(raw).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # permission, symlink loop
        raise ForbiddenError(f"cannot use {raw}: {exc}") from None
    if not inside(resolved, roots):
        raise ForbiddenError(f"{raw} is outside the allowed roots (VITDEX_ALLOWED_ROOTS)")
    return resolved


def _clear(out: Path) -> None:
    """Empty ``out`` of a previous export; refuse a folder holding anything else.

    Anything else in the image folders would be trained on, and anything else at the
    top is somebody's files: neither is deleted, the export is refused instead.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder")
    if not out.exists():
        return
    foreign: list[Path] = []
    for entry in out.iterdir():
        if entry.name in (TOML_NAME, MANIFEST_NAME) and entry.is_file():
            continue
        if entry.name in (INSTANCE_DIR, CLASS_DIR) and entry.is_dir() and not entry.is_symlink():
            foreign += [f for f in entry.iterdir() if not (_OWN_FILE.match(f.name) and f.is_file())]
            continue
        if entry.name == KOHYA_DIR and entry.is_dir() and not entry.is_symlink():
            foreign += _foreign_kohya(entry)
            continue
        foreign.append(entry)
    if foreign:
        shown = ", ".join(str(f) for f in foreign[:5])
        raise ConflictError(
            f"{out} holds files that are not a vitdex export ({shown}"
            f"{' ...' if len(foreign) > 5 else ''}); export into an empty or new folder"
        )
    for sub in (INSTANCE_DIR, CLASS_DIR, KOHYA_DIR):
        if (out / sub).is_dir():
            shutil.rmtree(out / sub)
    (out / TOML_NAME).unlink(missing_ok=True)


def _foreign_kohya(root: Path) -> list[Path]:
    """What in a previous export's ``kohya/`` folder that export did not write."""
    foreign: list[Path] = []
    for part in root.iterdir():
        if part.name not in ("img", "reg") or not part.is_dir() or part.is_symlink():
            foreign.append(part)
            continue
        for folder in part.iterdir():
            if not folder.is_dir() or folder.is_symlink() or "_" not in folder.name:
                foreign.append(folder)
                continue
            foreign += [
                f for f in folder.iterdir() if not (_OWN_FILE.match(f.name) and f.is_file())
            ]
    return foreign


#: One image to write: item id, image id, path, folder, the folders it may be read from.
_Job = tuple[int, int, str, str, tuple[Path, ...]]
_Written = tuple[
    dict[int, tuple[str, dict[str, Any]]], list[dict[str, Any]], dict[str, int], dict[str, int]
]


def _write(
    out: Path,
    jobs: list[_Job],
    *,
    captions: Mapping[int, str],
    prompt: str,
    class_prompt: str,
    resolution: int,
    max_megapixels: float,
    detect_faces: bool,
    progress: Progress | None,
    buckets: bool = False,
) -> _Written:
    """Crop, resize and caption each ``(item id, image id, path, folder, within)`` into ``out``.

    A photo that leads outside its library and the allowed roots is skipped, unread.

    Returns (caption and crop per item id, skipped files, crop methods, images per folder).
    """
    found = face_detector() if detect_faces else None
    detector = found[1] if found else None
    prepared: dict[int, tuple[str, dict[str, Any]]] = {}
    skipped: list[dict[str, Any]] = []
    methods: dict[str, int] = {}
    counters = {INSTANCE_DIR: 0, CLASS_DIR: 0}
    report = progress or (lambda _done, _total: None)
    report(0, len(jobs))
    for done, (item_id, image_id, path, role_dir, within) in enumerate(jobs, start=1):
        # A caption set by hand on the item wins over the dataset's prompt.
        caption = captions.get(item_id) or (prompt if role_dir == INSTANCE_DIR else class_prompt)
        try:
            # Read failures are the photo's (skipped), kept apart from the export's own.
            data = read_photo(path, within)
            square, crop = prepare_image(
                data,
                resolution,
                max_megapixels=max_megapixels,
                detect_faces=detect_faces,
                detector=detector,
                buckets=buckets,
                max_upscale=BUCKET_MAX_UPSCALE,
            )
        except ImageError as exc:
            log.warning("skipping image %d (%s): %s", image_id, path, exc.message)
            skipped.append({"image_id": image_id, "path": path, "error": exc.message})
            report(done, len(jobs))
            continue
        folder = out / role_dir
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{counters[role_dir]:04d}.png"
        counters[role_dir] += 1
        square.save(target, format="PNG", compress_level=3)
        write_caption(target, caption, CAPTION_EXTENSION)
        info = crop.to_dict()
        info.update(file=f"{role_dir}/{target.name}", resolution=resolution)
        prepared[item_id] = (caption, info)
        methods[crop.method] = methods.get(crop.method, 0) + 1
        report(done, len(jobs))
    return prepared, skipped, methods, counters


def _check_options(resolution: int, num_repeats: int | None, class_repeats: int) -> None:
    check_resolution(resolution)
    if num_repeats is not None and not 1 <= num_repeats <= 10_000:
        raise ConfigError(f"num_repeats must lie between 1 and 10000, not {num_repeats}")
    if not 1 <= class_repeats <= 10_000:
        raise ConfigError(f"class_repeats must lie between 1 and 10000, not {class_repeats}")


def export_dataset(
    settings: Settings,
    sessions: sessionmaker[Session],
    dataset: str | int,
    out: Path | None = None,
    *,
    resolution: int = 512,
    num_repeats: int | None = None,
    class_repeats: int = 1,
    detect_faces: bool = True,
    progress: Progress | None = None,
) -> ExportResult:
    """Write a dataset's included images as training folders plus ``dataset.toml``.

    ``dataset`` is a name or an id; ``out`` defaults to :func:`default_export_dir`. A
    previous export in ``out`` is replaced; a folder holding other files is refused
    (:class:`ConflictError`). ``num_repeats`` (instance) defaults to the class/instance
    ratio rounded up when there are class images (so each epoch sees both about equally),
    else 1. ``progress(done, total)`` is called after each image. Unreadable files are
    skipped and listed in the result; no readable instance image at all is an error.
    """
    _check_options(resolution, num_repeats, class_repeats)
    with sessions() as session:
        row = datasets.find_dataset(session, dataset)
        dataset_id, name = row.id, row.name
        prompt, class_prompt = row.prompt, row.class_prompt
        crop_mode = row.crop_mode or "square"
        trigger_word, class_word = row.trigger_word, row.class_word
        allowed = settings.api.allowed_roots
        within = {lib.id: photo_roots(lib.root, allowed) for lib in repo.list_libraries(session)}
        instances = datasets.included_items(session, dataset_id, "instance")
        class_rows = datasets.included_items(session, dataset_id, "class")
        plan: list[_Job] = [
            (item.id, image.id, image.path, INSTANCE_DIR, within[image.library_id])
            for item, image in instances
        ]
        classes: list[_Job] = [
            (item.id, image.id, image.path, CLASS_DIR, within[image.library_id])
            for item, image in class_rows
        ]
        captions = {item.id: item.caption for item, _ in instances + class_rows if item.caption}
    if not plan:
        raise ConfigError(
            f"dataset {name!r} has no included instance images "
            "(include some with `vitdex dataset include`)"
        )
    if classes and not class_prompt:
        # Hand-added class images without a class prompt: nothing to caption them with.
        raise ConfigError(f"dataset {name!r} has class images but no class prompt")
    target = out or default_export_dir(settings, dataset_id, name)
    try:
        out = target.expanduser().resolve()
        _clear(out)
        result = _write(
            out,
            plan + classes,
            captions=captions,
            prompt=prompt,
            class_prompt=class_prompt or "",
            resolution=resolution,
            max_megapixels=settings.index.max_megapixels,
            detect_faces=detect_faces,
            progress=progress,
            buckets=crop_mode == "buckets",
        )
    except PermissionError as exc:
        raise ForbiddenError(f"cannot write the export to {target}: {exc.strerror}") from None
    except (OSError, ValueError) as exc:  # name too long, disk full, NUL in a path...
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot write the export to {target}: {reason}") from None
    prepared, skipped, methods, counters = result

    n_instance, n_class = counters[INSTANCE_DIR], counters[CLASS_DIR]
    if n_instance == 0:
        raise ImageError(
            f"none of the {len(plan)} instance images of dataset {name!r} could be read "
            f"(first: {skipped[0]['path']}: {skipped[0]['error']})"
        )
    if num_repeats is None:
        num_repeats = max(1, math.ceil(n_class * class_repeats / n_instance)) if n_class else 1
    toml_path = out / TOML_NAME
    config = dataset_toml(
        instance_dir=out / INSTANCE_DIR,
        prompt=prompt,
        resolution=resolution,
        num_repeats=num_repeats,
        class_dir=(out / CLASS_DIR) if n_class else None,
        class_prompt=class_prompt,
        class_repeats=class_repeats,
        comment=f"vitdex dataset {name!r} (id {dataset_id}), kohya-ss sd-scripts config",
        buckets=_bucket_range(resolution) if crop_mode == "buckets" else None,
    )
    words = " ".join(w for w in (trigger_word, class_word) if w)
    try:
        toml_path.write_text(config, encoding="utf-8")
        layout = write_kohya_layout(
            out,
            instance_images=sorted((out / INSTANCE_DIR).glob("*.png")),
            class_images=sorted((out / CLASS_DIR).glob("*.png")) if n_class else [],
            repeats=num_repeats,
            class_repeats=class_repeats,
            instance_name=words or safe_name(name, "dataset"),
            class_name=class_word or "class",
            caption_extension=CAPTION_EXTENSION,
        )
    except OSError as exc:
        raise ConfigError(f"cannot write {toml_path}: {exc.strerror or exc}") from None
    # What was exported, for the checkpoint trained on it: the set as written, not the
    # dataset as it may be edited while training runs.
    written = [image_id for item_id, image_id, *_ in plan if item_id in prepared]
    with sessions() as session:
        datasets.record_export(session, dataset_id, str(out), prepared)
        session.commit()
        instance_hash = images_hash(session, written)
    manifest = {
        "dataset_id": dataset_id,
        "instance_images": written,
        "instance_hash": instance_hash,
    }
    try:
        (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {out / MANIFEST_NAME}: {exc.strerror or exc}") from None
    return ExportResult(
        dataset_id=dataset_id,
        name=name,
        path=out,
        toml=toml_path,
        resolution=resolution,
        instance=n_instance,
        class_images=n_class,
        num_repeats=num_repeats,
        class_repeats=class_repeats,
        skipped=skipped,
        methods=methods,
        instance_hash=instance_hash,
        crop_mode=crop_mode,
        kohya={
            "path": str(layout.root),
            "instance": str(layout.instance),
            "reg": None if layout.reg is None else str(layout.reg),
            "linked": layout.linked,
            "copied": layout.copied,
            "note": (
                f"kohya folder layout in {layout.root}: point kohya_ss's image folder at "
                f"{layout.root / 'img'}"
                + (f" and its regularisation folder at {layout.root / 'reg'}" if layout.reg else "")
            ),
        },
    )


def _bucket_range(resolution: int) -> tuple[int, int, int]:
    """kohya's min_bucket_reso, max_bucket_reso and bucket_reso_steps for ``resolution``:
    the shortest and longest side of our buckets, and their step (64 from 512 px up)."""
    from vitdex.training.buckets import bucket_sizes, default_step

    step = default_step(resolution)
    sides = [side for bucket in bucket_sizes(resolution, step) for side in bucket]
    return min(sides), max(sides), step


def exported_instance_hash(folder: Path) -> str | None:
    """The instance-image hash an export in ``folder`` recorded, or None (no export, or
    one written before exports recorded it)."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = manifest.get("instance_hash") if isinstance(manifest, dict) else None
    return value if isinstance(value, str) else None


def enqueue_export(
    settings: Settings,
    sessions: sessionmaker[Session],
    dataset: str | int,
    path: str | None,
    *,
    resolution: int = 512,
    num_repeats: int | None = None,
    class_repeats: int = 1,
    detect_faces: bool = True,
) -> dict[str, Any]:
    """Check an export asked for over HTTP and create its (queued) ``export`` job row.

    Everything that can be refused is refused here, before anything is queued: the
    folder (inside VITDEX_ALLOWED_ROOTS, or the default under VITDEX_HOME), the
    resolution, the repeats and the dataset. Returns the job as JSON.
    """
    from vitdex.db import jobs

    _check_options(resolution, num_repeats, class_repeats)
    out = allowed_export_dir(settings, path) if path is not None else None
    with sessions() as session:
        row = datasets.find_dataset(session, dataset)
        params = {
            "dataset_id": row.id,
            "path": str(out) if out is not None else None,
            "resolution": resolution,
            "num_repeats": num_repeats,
            "class_repeats": class_repeats,
            "detect_faces": detect_faces,
        }
        # The same export asked for twice while the first is pending runs once.
        key = json.dumps(params, sort_keys=True)
        job, _ = jobs.enqueue_job_row(session, "export", params, dedupe_key=key)
        session.commit()
        return jobs.job_to_dict(job)
