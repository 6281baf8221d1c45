"""Aspect-ratio buckets (kohya-style): train each image near its own shape.

Interface fixed for the rest of the training code; implemented in this module.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Bucket", "assign_bucket", "bucket_sizes", "histogram"]

#: (width, height) in pixels, both multiples of 64.
Bucket = tuple[int, int]


def bucket_sizes(resolution: int, step: int = 64) -> list[Bucket]:
    """Every bucket of a base resolution: area at most resolution², sides multiples of step."""
    raise NotImplementedError


def assign_bucket(
    width: int, height: int, resolution: int, *, max_upscale: float = 2.0, step: int = 64
) -> Bucket:
    """The bucket an image of ``width`` x ``height`` trains in."""
    raise NotImplementedError


def histogram(
    sizes: Iterable[tuple[int, int]], resolution: int, *, max_upscale: float = 2.0
) -> list[dict[str, int]]:
    """``[{"width", "height", "count"}]`` of the buckets the images fall in, largest first."""
    raise NotImplementedError
