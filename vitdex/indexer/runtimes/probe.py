"""The probe batch: a few generated photos every runtime embeds to measure its agreement.

The images are drawn, not random, so the same checkpoint always gets the same probe and
reference vectors: gradients, stripes, a checkerboard, discs and a noise texture from a
fixed seed cover smooth and high-frequency content, which is where reduced precisions
drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["PROBE_COUNT", "agreement", "probe_images"]

#: Photos in the probe batch: enough to see a drift, few enough to embed in a second.
PROBE_COUNT = 8
_SIDE = 256


def _gradient(kind: int) -> Image.Image:
    ramp = np.linspace(0, 255, _SIDE, dtype=np.float32)
    x, y = np.meshgrid(ramp, ramp)
    if kind == 0:
        planes: list[np.ndarray] = [x, y, 255 - x]
    else:
        planes = [y, 255 - (x + y) / 2, x]
    return Image.fromarray(np.stack(planes, axis=2).astype(np.uint8), "RGB")


def _stripes(period: int) -> Image.Image:
    x = np.arange(_SIDE)
    band = ((x // period) % 2 * 200 + 30).astype(np.uint8)
    red = np.tile(band, (_SIDE, 1))
    return Image.fromarray(np.stack([red, red.T, 255 - red], axis=2), "RGB")


def _checker(cell: int) -> Image.Image:
    x, y = np.meshgrid(np.arange(_SIDE), np.arange(_SIDE))
    board = (((x // cell) + (y // cell)) % 2 * 220 + 20).astype(np.uint8)
    return Image.fromarray(np.stack([board, 255 - board, board // 2], axis=2), "RGB")


def _discs() -> Image.Image:
    image = Image.new("RGB", (_SIDE, _SIDE), (40, 90, 160))
    draw = ImageDraw.Draw(image)
    for i in range(6):
        r = 20 + 12 * i
        cx, cy = 40 + 30 * i, 200 - 25 * i
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(250 - 30 * i, 40 * i, 120))
    return image


def _noise(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    # Upsampled noise: a texture, not per-pixel static that resizing would average away.
    return Image.fromarray(coarse, "RGB").resize((_SIDE, _SIDE), Image.Resampling.BICUBIC)


def probe_images() -> list[Image.Image]:
    """The :data:`PROBE_COUNT` probe photos, identical on every call and machine."""
    return [
        _gradient(0),
        _gradient(1),
        _stripes(9),
        _checker(24),
        _discs(),
        _noise(1),
        _noise(2),
        _checker(5),
    ][:PROBE_COUNT]


def agreement(
    reference: Mapping[str, np.ndarray], vectors: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """Least cosine per space between ``vectors`` and the ``reference`` (unit vectors,
    row for row): the worst probe photo is what counts."""
    figures: dict[str, float] = {}
    for name, ref in reference.items():
        got = np.asarray(vectors[name], dtype=np.float64)
        want = np.asarray(ref, dtype=np.float64)
        norms = np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
        cosines = (got * want).sum(axis=1) / np.maximum(norms, 1e-12)
        figures[name] = round(float(cosines.min()), 6)
    return figures
