"""Aspect-ratio buckets (kohya-style): train each image near its own shape.

A square crop throws away the sides of every landscape and portrait photo. Buckets keep
them: each image trains at the bucket whose aspect ratio is nearest its own, every bucket
holding about ``resolution²`` pixels (never more), so a batch costs about the same in any
bucket. A batch draws from one bucket only: its tensors must share one shape.

The bucket set follows kohya-ss/sd-scripts (``make_bucket_resolutions``): sides are
multiples of ``step`` between half and twice the resolution, and for each width the
tallest height whose area still fits (plus the transposes).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

__all__ = ["Bucket", "assign_bucket", "bucket_sizes", "default_step", "histogram"]

#: (width, height) in pixels, both multiples of the step (64 for real resolutions).
Bucket = tuple[int, int]


def default_step(resolution: int) -> int:
    """The side multiple of buckets at ``resolution``.

    64 for real resolutions (512 and up): a multiple of the VAE's 8x and the UNet's own
    8x downsampling. Below that (the tiny test pipelines at 32-256 px) an eighth of the
    resolution, so small runs still get several buckets.
    """
    if resolution >= 512:
        return 64
    return max(1, resolution // 8)


def _check(resolution: int, step: int) -> None:
    if resolution < 1 or step < 1:
        raise ValueError(f"resolution ({resolution}) and step ({step}) must be positive")


def bucket_sizes(resolution: int, step: int | None = None) -> list[Bucket]:
    """Every bucket of a base resolution: area at most resolution², sides multiples of step.

    ``step=None`` is :func:`default_step`. Sides lie between ``resolution // 2`` (rounded
    up to the step) and ``resolution * 2`` (rounded down); for each width the largest
    height that fits, and its transpose. Sorted from tallest to widest.
    """
    step = default_step(resolution) if step is None else step
    _check(resolution, step)
    area = resolution * resolution
    low = max(step, -(-(resolution // 2) // step) * step)
    high = max(low, (resolution * 2) // step * step)
    square = max(step, math.isqrt(area) // step * step)
    found: set[Bucket] = {(square, square)}
    for width in range(low, high + 1, step):
        height = min(high, area // width // step * step)
        if height >= low:
            found.add((width, height))
            found.add((height, width))
    return sorted(found, key=lambda b: (b[0] / b[1], b[0] * b[1]))


def _scale_to_cover(width: int, height: int, bucket: Bucket) -> float:
    """How much an image must be scaled so it covers ``bucket`` (then gets cropped)."""
    return max(bucket[0] / width, bucket[1] / height)


def assign_bucket(
    width: int,
    height: int,
    resolution: int,
    *,
    max_upscale: float = 2.0,
    step: int | None = None,
) -> Bucket:
    """The bucket an image of ``width`` x ``height`` trains in.

    The bucket with the nearest aspect ratio (compared as log ratios, so 2:1 and 1:2 are
    equally far from 1:1; ties go to the larger bucket). When covering it would scale
    the image up by more than ``max_upscale`` (blurry training data), a smaller bucket
    does instead: the image scaled by ``max_upscale`` (less if that exceeds the area),
    sides rounded down to the step, so about the image's own aspect. An image too small
    even for one step gets ``step`` on that side.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, not {width}x{height}")
    step = default_step(resolution) if step is None else step
    aspect = math.log(width / height)
    nearest = min(
        bucket_sizes(resolution, step),
        key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), -b[0] * b[1]),
    )
    if _scale_to_cover(width, height, nearest) <= max_upscale:
        return nearest
    # Too small for its bucket: the photo itself scaled up as far as allowed, each side
    # rounded down to the step (kohya's "no upscale" buckets, with a limit), so it keeps
    # its own aspect and needs no more than max_upscale to cover.
    scale = min(max_upscale, math.sqrt(resolution * resolution / (width * height)))
    return (
        max(step, math.floor(width * scale / step) * step),
        max(step, math.floor(height * scale / step) * step),
    )


def histogram(
    sizes: Iterable[tuple[int, int]],
    resolution: int,
    *,
    max_upscale: float = 2.0,
    step: int | None = None,
) -> list[dict[str, int]]:
    """``[{"width", "height", "count"}]`` of the buckets the images fall in, largest first.

    ``sizes`` are the images' upright (width, height). Ties are ordered by bucket shape
    so the result is stable.
    """
    counts = Counter(
        assign_bucket(w, h, resolution, max_upscale=max_upscale, step=step) for w, h in sizes
    )
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [{"width": b[0], "height": b[1], "count": n} for b, n in ordered]
