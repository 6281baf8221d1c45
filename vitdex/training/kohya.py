"""kohya-ss's folder layout: ``img/{repeats}_{name}/`` and ``reg/{repeats}_{class}/``.

kohya-ss sd-scripts (and the GUIs built on it) read a training set as folders whose
names carry the repeat count and the class tokens: ``img/10_sks dog/0000.png`` with
``0000.txt`` beside it. An export writes that layout next to its own (``instance/``,
``class/``) from the same files, hard-linked where the filesystem allows, so users of
either tool point it at the folder and go. :func:`read_kohya_layout` parses one back.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "IMG_DIR",
    "KOHYA_DIR",
    "REG_DIR",
    "KohyaLayout",
    "KohyaSubset",
    "dataset_toml",
    "folder_name",
    "read_kohya_layout",
    "safe_name",
    "write_kohya_layout",
]

KOHYA_DIR = "kohya"
IMG_DIR = "img"
REG_DIR = "reg"
#: ``{repeats}_{name}``, as kohya's DreamBooth dataset parses a folder name.
_SUBSET = re.compile(r"^(\d+)_(.+)$")
#: Characters no folder name may hold on Windows (where many kohya users train) or POSIX.
_UNSAFE = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]+')


@dataclass
class KohyaSubset:
    """One kohya image folder: its repeats, its name (class tokens) and its images."""

    repeats: int
    name: str
    is_reg: bool
    folder: Path
    #: (image file, its caption or None when it has no ``.txt``), sorted by file name.
    images: list[tuple[Path, str | None]] = field(default_factory=list)


@dataclass
class KohyaLayout:
    """What :func:`write_kohya_layout` wrote."""

    root: Path
    instance: Path
    reg: Path | None
    linked: int
    copied: int


def safe_name(text: str, fallback: str = "subject") -> str:
    """``text`` as one folder name: no separators or reserved characters, one space between
    words, at most 64 characters, never empty (``fallback``)."""
    name = " ".join(_UNSAFE.sub(" ", text).split())[:64].strip(" .")
    return name or fallback


def folder_name(repeats: int, name: str) -> str:
    """``{repeats}_{name}`` with ``name`` made safe."""
    return f"{int(repeats)}_{safe_name(name)}"


def _place(source: Path, target: Path) -> bool:
    """Hard-link ``source`` at ``target`` (True), or copy it when linking fails (False)."""
    try:
        os.link(source, target)
        return True
    except OSError:  # another filesystem, or one without hard links
        shutil.copyfile(source, target)
        return False


def _fill(folder: Path, images: Sequence[Path], caption_extension: str) -> tuple[int, int]:
    folder.mkdir(parents=True, exist_ok=True)
    linked = copied = 0
    for image in images:
        for source in (image, image.with_suffix(caption_extension)):
            if not source.is_file():
                continue
            if _place(source, folder / source.name):
                linked += 1
            else:
                copied += 1
    return linked, copied


def write_kohya_layout(
    out: Path,
    *,
    instance_images: Sequence[Path],
    class_images: Sequence[Path],
    repeats: int,
    class_repeats: int,
    instance_name: str,
    class_name: str,
    caption_extension: str = ".txt",
) -> KohyaLayout:
    """Write ``out/kohya/img/{repeats}_{instance_name}/`` (and ``reg/`` for class images).

    Each image's caption file beside it comes along. ``out/kohya`` is replaced if present.
    """
    root = out / KOHYA_DIR
    if root.exists():
        shutil.rmtree(root)
    instance = root / IMG_DIR / folder_name(repeats, instance_name)
    linked, copied = _fill(instance, instance_images, caption_extension)
    reg = None
    if class_images:
        reg = root / REG_DIR / folder_name(class_repeats, class_name)
        more = _fill(reg, class_images, caption_extension)
        linked, copied = linked + more[0], copied + more[1]
    return KohyaLayout(root=root, instance=instance, reg=reg, linked=linked, copied=copied)


def read_kohya_layout(
    root: Path,
    *,
    caption_extension: str = ".txt",
    image_suffixes: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp"),
) -> list[KohyaSubset]:
    """The subsets of a kohya folder (``root`` holds ``img/`` and maybe ``reg/``).

    Folders whose names are not ``{repeats}_{name}`` are skipped, as kohya skips them.
    """
    subsets: list[KohyaSubset] = []
    for part, is_reg in ((IMG_DIR, False), (REG_DIR, True)):
        base = root / part
        if not base.is_dir():
            continue
        for folder in sorted(p for p in base.iterdir() if p.is_dir()):
            match = _SUBSET.match(folder.name)
            if match is None:
                continue
            subset = KohyaSubset(int(match[1]), match[2], is_reg, folder)
            for image in sorted(folder.iterdir()):
                if image.suffix.lower() not in image_suffixes or not image.is_file():
                    continue
                text = image.with_suffix(caption_extension)
                caption = text.read_text("utf-8").strip() if text.is_file() else None
                subset.images.append((image, caption))
            subsets.append(subset)
    return subsets


def _toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes, \\uXXXX included).
    return json.dumps(value, ensure_ascii=False)


def dataset_toml(
    *,
    instance_dir: Path,
    prompt: str,
    resolution: int,
    num_repeats: int,
    class_dir: Path | None = None,
    class_prompt: str | None = None,
    class_repeats: int = 1,
    comment: str | None = None,
    buckets: tuple[int, int, int] | None = None,
    caption_extension: str = ".txt",
) -> str:
    """A kohya-ss sd-scripts dataset config for the exported folders (absolute paths).

    ``class_tokens`` is what kohya falls back on for an image without a caption file;
    every exported image has one, so it only matters if a caption is deleted.
    ``buckets`` (min and max bucket side, side step) switches kohya's aspect-ratio
    bucketing on, upscaling allowed (``bucket_no_upscale = false``).
    """
    lines = [f"# {line}" for line in (comment or "").splitlines()]
    lines += ["[general]"]
    if buckets is None:
        lines += ["enable_bucket = false"]
    else:
        lines += [
            "enable_bucket = true",
            f"min_bucket_reso = {int(buckets[0])}",
            f"max_bucket_reso = {int(buckets[1])}",
            f"bucket_reso_steps = {int(buckets[2])}",
            "bucket_no_upscale = false",
        ]
    lines += [
        "shuffle_caption = false",
        "keep_tokens = 0",
        f"caption_extension = {_toml_string(caption_extension)}",
        "",
        "[[datasets]]",
        f"resolution = {int(resolution)}",
        "batch_size = 1",
        "",
        "  [[datasets.subsets]]",
        f"  image_dir = {_toml_string(str(instance_dir))}",
        f"  class_tokens = {_toml_string(prompt)}",
        f"  caption_extension = {_toml_string(caption_extension)}",
        f"  num_repeats = {int(num_repeats)}",
    ]
    if class_dir is not None:
        lines += [
            "",
            "  [[datasets.subsets]]",
            "  is_reg = true",
            f"  image_dir = {_toml_string(str(class_dir))}",
            f"  class_tokens = {_toml_string(class_prompt or '')}",
            f"  caption_extension = {_toml_string(caption_extension)}",
            f"  num_repeats = {int(class_repeats)}",
        ]
    return "\n".join(lines) + "\n"
