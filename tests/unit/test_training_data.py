"""DreamBooth data: caption sidecars, a resumable order, resize and crop."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitdex.errors import ConfigError, ImageError, NotFoundError
from vitdex.training.data import (
    Augmentation,
    augmentation,
    captions_of,
    example_index,
    image_size,
    load_examples,
    load_pixels,
)


def _image(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> Path:
    Image.new("RGB", size, color).save(path)
    return path


def test_captions_from_sidecars_with_fallback(tmp_path: Path) -> None:
    _image(tmp_path / "0001.png", (8, 8), (255, 0, 0))
    _image(tmp_path / "0000.jpg", (8, 8), (0, 255, 0))
    _image(tmp_path / "0002.png", (8, 8), (0, 0, 255))
    (tmp_path / "0000.txt").write_text("  a photo of sks dog on grass \n")
    (tmp_path / "0002.txt").write_text("   \n")  # empty: falls back
    (tmp_path / "notes.md").write_text("not an image")
    examples = load_examples(tmp_path, "a photo of sks dog")
    assert [e.image.name for e in examples] == ["0000.jpg", "0001.png", "0002.png"]
    assert [e.caption for e in examples] == [
        "a photo of sks dog on grass",
        "a photo of sks dog",
        "a photo of sks dog",
    ]
    assert captions_of(examples) == ["a photo of sks dog on grass", "a photo of sks dog"]


def test_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        load_examples(tmp_path / "nope", "x")
    with pytest.raises(ConfigError, match="holds no images"):
        load_examples(tmp_path, "x")


def test_each_epoch_is_a_permutation_and_positions_are_random_access() -> None:
    count = 5
    draws = [example_index(3, 0, p, count) for p in range(4 * count)]
    for epoch in range(4):
        assert sorted(draws[epoch * count : (epoch + 1) * count]) == list(range(count))
    # Epochs differ, and the class stream has its own order.
    assert len({tuple(draws[e * count : (e + 1) * count]) for e in range(4)}) > 1
    assert [example_index(3, 1, p, count) for p in range(count)] != draws[:count]
    # Any position is found again without replaying the ones before it.
    assert example_index(3, 0, 17, count) == draws[17]
    assert Counter(draws) == dict.fromkeys(range(count), 4)


def test_augmentation_is_a_pure_function() -> None:
    a = augmentation(1, 0, 42, random_flip=True, random_crop=True)
    assert a == augmentation(1, 0, 42, random_flip=True, random_crop=True)
    flips = [augmentation(1, 0, p, random_flip=True, random_crop=False).flip for p in range(200)]
    assert 60 < sum(flips) < 140
    plain = augmentation(1, 0, 42, random_flip=False, random_crop=False)
    assert plain == Augmentation(False, 0.5, 0.5)


def test_load_pixels_resizes_crops_and_flips(tmp_path: Path) -> None:
    # Left half black, right half white, 80x40: the centre crop of the 64x32 resize
    # keeps both halves; a flip swaps them.
    array = np.zeros((40, 80, 3), dtype=np.uint8)
    array[:, 40:] = 255
    path = tmp_path / "wide.png"
    Image.fromarray(array).save(path)
    pixels = load_pixels(path, 32, Augmentation(False, 0.5, 0.5))
    assert pixels.shape == (3, 32, 32)
    assert pixels.dtype == torch.float32
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0
    assert pixels[:, :, 0].mean() < -0.9 and pixels[:, :, -1].mean() > 0.9
    flipped = load_pixels(path, 32, Augmentation(True, 0.5, 0.5))
    assert torch.equal(flipped, pixels.flip(-1))
    left = load_pixels(path, 32, Augmentation(False, 0.0, 0.5))
    assert left.mean() < -0.9  # the left crop is all black


def test_broken_image_is_an_image_error(tmp_path: Path) -> None:
    path = tmp_path / "0000.png"
    path.write_bytes(b"not a png")
    with pytest.raises(ImageError):
        load_pixels(path, 32, Augmentation(False, 0.5, 0.5))


def test_load_pixels_to_a_bucket_size(tmp_path: Path) -> None:
    # 80x40, left half black, right half white; cut to a 48x32 bucket (1.5:1).
    array = np.zeros((40, 80, 3), dtype=np.uint8)
    array[:, 40:] = 255
    path = tmp_path / "wide.png"
    Image.fromarray(array).save(path)
    pixels = load_pixels(path, 32, Augmentation(False, 0.5, 0.5), (48, 32))
    assert pixels.shape == (3, 32, 48)  # [C, height, width]
    assert pixels[:, :, 0].mean() < -0.9 and pixels[:, :, -1].mean() > 0.9
    # Covering 48x32 scales 80x40 to 64x32: 16 columns to choose from.
    left = load_pixels(path, 32, Augmentation(False, 0.0, 0.5), (48, 32))
    right = load_pixels(path, 32, Augmentation(False, 1.0, 0.5), (48, 32))
    assert (left < 0).float().mean() == pytest.approx(32 / 48, abs=0.03)
    assert (right > 0).float().mean() == pytest.approx(32 / 48, abs=0.03)
    flipped = load_pixels(path, 32, Augmentation(True, 0.5, 0.5), (48, 32))
    assert torch.equal(flipped, pixels.flip(-1))
    # A portrait target from a landscape image: resized to cover it, then cut.
    tall = load_pixels(path, 32, Augmentation(False, 0.5, 0.5), (24, 40))
    assert tall.shape == (3, 40, 24)


def test_square_size_is_the_default(tmp_path: Path) -> None:
    path = _image(tmp_path / "0000.png", (50, 30), (10, 200, 30))
    aug = Augmentation(False, 0.3, 0.5)
    assert torch.equal(load_pixels(path, 24, aug), load_pixels(path, 24, aug, (24, 24)))


def test_image_size_is_upright_from_the_header(tmp_path: Path) -> None:
    plain = _image(tmp_path / "0000.png", (60, 20), (1, 2, 3))
    assert image_size(plain) == (60, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown turned by 90°
    for name in ("0001.jpg", "0002.png"):
        Image.new("RGB", (60, 20), (9, 9, 9)).save(tmp_path / name, exif=exif.tobytes())
        assert image_size(tmp_path / name) == (20, 60)
    broken = tmp_path / "0003.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ImageError, match="cannot read training image"):
        image_size(broken)
    with pytest.raises(ImageError):
        image_size(tmp_path / "missing.png")


def test_image_size_refuses_links_out_of_the_folder(tmp_path: Path) -> None:
    outside = _image(tmp_path / "outside.png", (10, 10), (0, 0, 0))
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "0000.png").symlink_to(outside)
    with pytest.raises(ImageError, match="training folder"):
        image_size(folder / "0000.png")
