"""Camera-sized JPEGs for the throughput benchmark, generated once and cached."""

from __future__ import annotations

import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

__all__ = ["default_cache", "make_photos"]


def default_cache() -> Path:
    """Where generated JPEGs are kept between runs (``$XDG_CACHE_HOME/vitdex/bench``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vitdex" / "bench"


def _camera_jpeg(path: Path, size: tuple[int, int], seed: int, quality: int) -> Path:
    """A camera-sized, photo-like JPEG: a smooth scene plus sensor-like noise."""
    try:
        from tests.photos import make_camera_jpeg
    except ImportError:  # running outside the source tree
        import numpy as np
        from PIL import Image, ImageFilter

        width, height = size
        rng = np.random.default_rng(seed)
        small = rng.integers(0, 256, size=(max(4, height // 400), max(4, width // 400), 3))
        scene = Image.fromarray(small.astype(np.uint8), "RGB").resize(
            size, Image.Resampling.BICUBIC
        )
        scene = scene.filter(ImageFilter.GaussianBlur(8))
        pixels = np.asarray(scene).astype(np.int16)
        pixels += rng.integers(-12, 13, size=(height, width, 1), dtype=np.int16)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(
            path, "JPEG", quality=quality
        )
        return path
    return make_camera_jpeg(path, size=size, seed=seed, quality=quality)


def _one_photo(args: tuple[str, tuple[int, int], int, int]) -> str:
    path, size, seed, quality = args
    tmp = Path(path).with_suffix(".part")
    _camera_jpeg(tmp, size, seed, quality)
    tmp.replace(path)  # only complete files count as cached
    return path


def make_photos(
    folder: Path, count: int, size: tuple[int, int], quality: int, cache: Path
) -> list[Path]:
    """``count`` distinct camera JPEGs in ``folder`` (hard links into a reusable cache)."""
    store = cache / f"jpeg-{size[0]}x{size[1]}-q{quality}"
    store.mkdir(parents=True, exist_ok=True)
    wanted = [store / f"photo-{seed:05d}.jpg" for seed in range(count)]
    missing = [p for p in wanted if not p.is_file()]
    if missing:
        started = time.perf_counter()
        jobs = [(str(p), size, int(p.stem.split("-")[1]), quality) for p in missing]
        with ProcessPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
            list(pool.map(_one_photo, jobs))
        print(
            f"wrote {len(missing)} JPEGs of {size[0]}x{size[1]} to {store} "
            f"in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in wanted:
        target = folder / path.name
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)
        out.append(target)
    return out
