"""How a checkpoint wants its pixels, and turning photos into the batch it takes.

:class:`Preprocessing` is read from the checkpoint's ``preprocessor_config.json`` and
recorded with every space (a change makes old and new vectors incomparable);
:func:`pixel_batch` follows it with PIL for the resize, then rescales and normalises the
whole batch at once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["Preprocessing", "pixel_batch", "read_preprocessing"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preprocessing:
    """How a checkpoint wants its pixels: resize, optional centre crop, rescale, normalise."""

    do_resize: bool
    #: {"height", "width"} or {"shortest_edge"}.
    size: dict[str, int]
    resample: int
    do_center_crop: bool
    crop_size: dict[str, int] | None
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    #: True when the checkpoint had no preprocessor_config.json and ViT defaults are used.
    defaulted: bool = False

    @property
    def input_size(self) -> tuple[int, int]:
        """The (height, width) the model receives."""
        if self.do_center_crop and self.crop_size:
            return self.crop_size["height"], self.crop_size["width"]
        if "height" in self.size:
            return self.size["height"], self.size["width"]
        edge = self.size["shortest_edge"]
        return edge, edge

    def to_record(self) -> dict[str, Any]:
        """JSON-ready description recorded with each space (what makes vectors comparable)."""
        record: dict[str, Any] = {
            "do_resize": self.do_resize,
            "size": dict(self.size),
            "resample": self.resample,
            "do_center_crop": self.do_center_crop,
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            # Photos are decoded with JPEG draft (DCT-scaled) decoding before the resize.
            "draft": True,
        }
        if self.do_center_crop and self.crop_size:
            record["crop_size"] = dict(self.crop_size)
        return record


def _triple(value: Any, default: float) -> tuple[float, float, float]:
    if value is None:
        return (default, default, default)
    if isinstance(value, int | float):
        return (float(value), float(value), float(value))
    values = [float(v) for v in value]
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise ValueError(f"expected 3 channel values, got {value!r}")
    return (values[0], values[1], values[2])


def _size_dict(value: Any, *, square: bool) -> dict[str, int]:
    if isinstance(value, int):
        # Old feature-extractor configs give one number; ViT's processor reads it as a square.
        return {"height": value, "width": value} if square else {"shortest_edge": value}
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return {"height": int(value["height"]), "width": int(value["width"])}
        if "shortest_edge" in value:
            return {"shortest_edge": int(value["shortest_edge"])}
    raise ValueError(f"unsupported size {value!r}")


def read_preprocessing(folder: Path, image_size: int) -> Preprocessing:
    """Read ``preprocessor_config.json`` from a checkpoint folder.

    Without one, ViT's defaults at the model's ``image_size`` are used (and logged).
    Raises ``ValueError`` for a file vitdex cannot follow.
    """
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        log.warning(
            "%s has no preprocessor_config.json; using ViT defaults: resize to %dx%d "
            "bilinear, rescale 1/255, normalise mean=std=0.5",
            folder,
            image_size,
            image_size,
        )
        return Preprocessing(
            do_resize=True,
            size={"height": image_size, "width": image_size},
            resample=2,
            do_center_crop=False,
            crop_size=None,
            do_rescale=True,
            rescale_factor=1 / 255,
            do_normalize=True,
            image_mean=(0.5, 0.5, 0.5),
            image_std=(0.5, 0.5, 0.5),
            defaulted=True,
        )
    raw: dict[str, Any] = json.loads(path.read_text())
    do_resize = bool(raw.get("do_resize", True))
    size = _size_dict(raw.get("size", image_size), square=True)
    do_center_crop = bool(raw.get("do_center_crop", False))
    crop_size = (
        _size_dict(raw.get("crop_size", image_size), square=True) if do_center_crop else None
    )
    if "shortest_edge" in size and not do_center_crop:
        # Aspect-preserving resizes give each photo its own shape, which a ViT batch cannot
        # hold; crop the centre to the model's square, as most such checkpoints do.
        log.warning(
            "%s resizes by shortest edge without a crop; centre-cropping to %dx%d",
            folder,
            image_size,
            image_size,
        )
        do_center_crop = True
        crop_size = {"height": image_size, "width": image_size}
    resample = raw.get("resample", 2)
    resample = 2 if resample is None else int(resample)
    if resample not in range(6):  # PIL's NEAREST..LANCZOS codes
        raise ValueError(f"unsupported resample {resample!r}")
    return Preprocessing(
        do_resize=do_resize,
        size=size,
        resample=resample,
        do_center_crop=do_center_crop,
        crop_size=crop_size,
        do_rescale=bool(raw.get("do_rescale", True)),
        rescale_factor=float(raw.get("rescale_factor", 1 / 255)),
        do_normalize=bool(raw.get("do_normalize", True)),
        image_mean=_triple(raw.get("image_mean"), 0.5),
        image_std=_triple(raw.get("image_std"), 0.5),
    )


def _fit(image: Image.Image, prep: Preprocessing, height: int, width: int) -> Any:
    if image.mode != "RGB":
        image = image.convert("RGB")
    resample = Image.Resampling(prep.resample)
    if prep.do_resize:
        if "height" in prep.size:
            target = (prep.size["width"], prep.size["height"])
        else:  # shortest edge, as transformers computes it
            edge = prep.size["shortest_edge"]
            w, h = image.size
            if w <= h:
                target = (edge, int(edge * h / w))
            else:
                target = (int(edge * w / h), edge)
        if image.size != target:
            image = image.resize(target, resample=resample)
    if prep.do_center_crop:
        w, h = image.size
        top, left = (h - height) // 2, (w - width) // 2
        if top >= 0 and left >= 0:
            image = image.crop((left, top, left + width, top + height))
    if image.size != (width, height):  # no resize asked for, but the model needs its size
        image = image.resize((width, height), resample=resample)
    return np.asarray(image)


def pixel_batch(images: Sequence[Image.Image], prep: Preprocessing) -> torch.Tensor:
    """PIL images of any size and mode to one normalised float32 batch [n, 3, H, W].

    Each image is resized with PIL as ``prep`` says; the rescale and normalisation then
    run once over the whole batch.
    """
    height, width = prep.input_size
    pixels = np.empty((len(images), height, width, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        pixels[i] = _fit(image, prep, height, width)
    batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(torch.float32)
    # (x * rescale - mean) / std folded into one multiply-add per pixel.
    scale = prep.rescale_factor if prep.do_rescale else 1.0
    if prep.do_normalize:
        std = torch.tensor(prep.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        mean = torch.tensor(prep.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        batch = batch.mul_(scale / std).sub_(mean / std)
    elif scale != 1.0:
        batch = batch.mul_(scale)
    return batch.contiguous()
