"""DreamBooth training data: image folders with caption sidecars, and a resumable order.

A dataset folder holds ``NNNN.png`` (or .jpg/.jpeg/.webp) files, each with an optional
``NNNN.txt`` caption beside it; a missing or empty caption falls back to the run's prompt.
Which example comes next and how it is augmented are pure functions of (seed, position),
so a resumed run needs only its step to continue with exactly the same data.

Images and captions are read only from inside the dataset folder: a link inside it may
point elsewhere in the folder, but a link out of it (to ``/etc/passwd``, say) is refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from vitdex.errors import ConfigError, ImageError, NotFoundError
from vitdex.indexer.images import decode_image, open_photo
from vitdex.paths import confine, read_confined

#: How refusals name the folder training files may be read from.
_SCOPE = "the training folder"
#: The EXIF orientation tag, and the orientations that turn the picture by 90°.
_ORIENTATION = 0x0112
_SWAPS_AXES = frozenset({5, 6, 7, 8})

__all__ = [
    "IMAGE_SUFFIXES",
    "Augmentation",
    "Example",
    "augmentation",
    "captions_of",
    "example_index",
    "image_size",
    "load_examples",
    "load_pixels",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class Example:
    """One training image and its caption."""

    image: Path
    caption: str


def load_examples(folder: str | Path, default_prompt: str) -> list[Example]:
    """The images in ``folder`` (sorted by name) with their captions.

    The caption is the stripped text of the image's ``.txt`` sidecar; without one (or when
    it is empty) ``default_prompt`` is used. An image or caption that leads outside the
    folder raises :class:`~vitdex.errors.PathRefusedError`: training would read it.
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise NotFoundError(f"dataset folder {path} does not exist")
    within = (path.resolve(),)
    examples = []
    for image in sorted(path.iterdir()):
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        _check_link(image, within)
        if not image.is_file():  # dangling links are skipped like other non-files
            continue
        sidecar = image.with_suffix(".txt")
        caption = ""
        if sidecar.is_file():
            caption = read_confined(sidecar, within, scope=_SCOPE).decode("utf-8").strip()
        examples.append(Example(image=image, caption=caption or default_prompt))
    if not examples:
        raise ConfigError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return examples


def _check_link(path: Path, within: tuple[Path, ...]) -> None:
    """Refuse a link out of the training folder, naming the folder in the reason.

    The decoder and :func:`read_confined` refuse it too, in the library's words.
    """
    # A dangling link: the caller skips it, or the decoder says "file not found".
    if path.is_symlink():
        with contextlib.suppress(FileNotFoundError):
            confine(path, within, scope=_SCOPE)


def example_index(seed: int, stream: int, position: int, count: int) -> int:
    """Which of ``count`` examples the ``position``-th draw of a stream uses.

    Each pass over the data (epoch) is a fresh permutation seeded by (seed, stream, epoch):
    every example appears once per epoch, and any position is found without replaying
    the ones before it.
    """
    epoch, offset = divmod(position, count)
    order = np.random.default_rng([seed, stream, epoch]).permutation(count)
    return int(order[offset])


@dataclass(frozen=True)
class Augmentation:
    """How one draw is augmented: horizontal flip and crop offsets in [0, 1]."""

    flip: bool
    crop_x: float
    crop_y: float


def augmentation(
    seed: int, stream: int, position: int, *, random_flip: bool, random_crop: bool
) -> Augmentation:
    """The augmentation of the ``position``-th draw (a pure function of its arguments)."""
    rng = np.random.default_rng([seed, stream, position, 1])
    flip_draw, x, y = rng.random(3)
    return Augmentation(
        flip=bool(random_flip and flip_draw < 0.5),
        crop_x=float(x) if random_crop else 0.5,
        crop_y=float(y) if random_crop else 0.5,
    )


def image_size(path: Path) -> tuple[int, int]:
    """The upright (width, height) of a training image, from its header where possible.

    EXIF orientations that turn the picture by 90° swap the stored sides, as the decoder
    does. (A PNG whose eXIf chunk follows the pixel data is decoded to find it.) ``path``
    must resolve inside its folder, like :func:`load_pixels`.
    """
    within = (path.parent.resolve(),)
    try:
        _check_link(path, within)
        with open_photo(path, within) as handle, Image.open(handle) as img:
            width, height = img.size
            orientation = img.getexif().get(_ORIENTATION, 1)
    except ImageError as exc:
        raise ImageError(f"cannot read training image {path}: {exc.message}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot read training image {path}: {exc}") from exc
    return (height, width) if orientation in _SWAPS_AXES else (width, height)


def load_pixels(
    path: Path, resolution: int, aug: Augmentation, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """``path`` as a float tensor [3, height, width] in [-1, 1].

    ``size`` is the (width, height) to cut (an aspect-ratio bucket); None means the
    ``resolution`` square. The image is resized to just cover it and the box is cut
    where ``aug`` says (centre by default); the curated sets are square already, so
    without buckets this is a resize.
    ``path`` must resolve inside its folder (:class:`~vitdex.errors.PathRefusedError`).
    """
    target_w, target_h = size or (resolution, resolution)
    within = (path.parent.resolve(),)
    try:
        _check_link(path, within)
        # The indexer's decoder: EXIF orientation, every mode and colour profile to sRGB,
        # the bomb guard, and a reduced JPEG decode where the image is much larger.
        image = decode_image(path, min_size=(target_w, target_h), within=within).image
    except ImageError as exc:
        raise ImageError(f"cannot read training image {path}: {exc.message}") from exc
    width, height = image.size
    # For a square this is resolution / min(width, height), to the bit.
    scale = max(target_w / width, target_h / height)
    cover = (max(target_w, round(width * scale)), max(target_h, round(height * scale)))
    if cover != image.size:
        image = image.resize(cover, Image.Resampling.BICUBIC, reducing_gap=3.0)
    left = round((cover[0] - target_w) * aug.crop_x)
    top = round((cover[1] - target_h) * aug.crop_y)
    image = image.crop((left, top, left + target_w, top + target_h))
    if aug.flip:
        image = ImageOps.mirror(image)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def captions_of(examples: Sequence[Example]) -> list[str]:
    """The distinct captions of ``examples``, in first-seen order."""
    return list(dict.fromkeys(e.caption for e in examples))
