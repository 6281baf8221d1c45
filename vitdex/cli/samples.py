"""Sample photos for the demo: real photos shipped inside a package, plus generated ones.

scikit-image's wheel carries a handful of real photographs (an astronaut, a cat, a cup of
coffee, a rocket...), so the demo works offline. Each gets a few edited copies (resized,
cropped, re-compressed, mirrored), which a good embedding must place next to the original.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

#: Real photographs in scikit-image's data folder (the rest there are diagrams or micrographs).
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "camera.png",
    "coins.png",
    "brick.png",
    "grass.png",
)


def shipped_photos() -> list[Path]:
    """Paths of the real photos shipped with scikit-image, if it is installed."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        return []
    folder = Path(spec.origin).parent / "data"
    return [folder / name for name in SKIMAGE_PHOTOS if (folder / name).is_file()]


def edited_copies(source: Path, folder: Path) -> list[Path]:
    """Write a few edits of ``source`` as JPEGs into ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = source.stem
    with Image.open(source) as img:
        rgb = ImageOps.exif_transpose(img).convert("RGB")
    w, h = rgb.size
    out = []
    edits = {
        "original": rgb,
        "small": rgb.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS),
        "crop": rgb.crop((w // 10, h // 10, w - w // 10, h - h // 10)),
        "mirror": ImageOps.mirror(rgb),
    }
    for name, edited in edits.items():
        path = folder / f"{stem}-{name}.jpg"
        edited.save(path, quality=70 if name == "small" else 90)
        out.append(path)
    return out


def generated_photo(path: Path, seed: int, size: tuple[int, int] = (640, 480)) -> Path:
    """Draw a photo-like picture (sky gradient, hills, shapes, grain) decided by ``seed``."""
    rng = np.random.default_rng(seed)
    w, h = size
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    sky = (top * (1 - t) + bottom * t).astype(np.float32)
    pixels = np.broadcast_to(sky, (h, w, 3)).copy()
    pixels += rng.normal(0, 6, size=(h, w, 3))
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    horizon = int(h * rng.uniform(0.4, 0.8))
    xs = np.linspace(0, w, 12)
    ys = horizon + rng.normal(0, h * 0.05, size=12)
    hill = [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)] + [(w, h), (0, h)]
    draw.polygon(hill, fill=tuple(int(c) for c in rng.integers(0, 200, 3)))
    for _ in range(int(rng.integers(2, 7))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(h // 20, h // 5))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=colour)
        else:
            draw.rectangle((x0 - r, y0 - r // 2, x0 + r, y0 + r // 2), fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(radius=1.2))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=88)
    return path


def make_sample_folder(folder: Path, generated: int = 24) -> list[Path]:
    """Fill ``folder`` with the shipped photos (and edits of them) plus generated ones."""
    paths: list[Path] = []
    for photo in shipped_photos():
        paths.extend(edited_copies(photo, folder / "shipped"))
    for seed in range(generated):
        paths.append(generated_photo(folder / "generated" / f"scene-{seed:03d}.jpg", seed))
    return paths
