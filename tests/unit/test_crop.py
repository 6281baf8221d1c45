"""Crops on the subject (squares and bucket boxes): faces, saliency, centre; EXIF
orientation; captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitdex.errors import ConfigError, ImageError
from vitdex.training.buckets import assign_bucket
from vitdex.training.crop import (
    FACE_EXPAND,
    Box,
    Crop,
    bucket_crop,
    face_detector,
    find_subject,
    prepare_image,
    saliency_map,
    square_crop,
    write_caption,
)


def contains(outer: Box, inner: Box) -> bool:
    return (
        outer[0] <= inner[0]
        and outer[1] <= inner[1]
        and inner[2] <= outer[2]
        and inner[3] <= outer[3]
    )


def is_square_inside(box: Box, size: tuple[int, int]) -> bool:
    left, top, right, bottom = box
    return (
        right - left == bottom - top > 0
        and left >= 0
        and top >= 0
        and right <= size[0]
        and (bottom <= size[1])
    )


def scene(
    size: tuple[int, int], disc: tuple[int, int] | None, radius: int = 20, seed: int = 0
) -> np.ndarray:
    """A grey, slightly noisy background with one red disc centred at ``disc``."""
    width, height = size
    rng = np.random.default_rng(seed)
    pixels = np.full((height, width, 3), 120.0) + rng.normal(0, 4, (height, width, 3))
    if disc is not None:
        ys, xs = np.mgrid[0:height, 0:width]
        pixels[(xs - disc[0]) ** 2 + (ys - disc[1]) ** 2 < radius**2] = (230, 40, 40)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def disc_box(disc: tuple[int, int], radius: int) -> Box:
    return disc[0] - radius, disc[1] - radius, disc[0] + radius, disc[1] + radius


# --------------------------------------------------------------------------- faces


def test_face_crop_on_a_real_portrait() -> None:
    import skimage.data as skimage_data  # dev and the train extra install scikit-image

    assert face_detector() is not None, "the train extra's face detector is missing"
    astronaut = Image.fromarray(skimage_data.astronaut())  # 512x512, one face
    square, crop = square_crop(astronaut, 128)
    assert square.size == (128, 128) and square.mode == "RGB"
    assert crop.method == "face"
    assert len(crop.faces) == 1
    face = crop.faces[0]
    # Eileen Collins' face lies around x 170..280, y 60..170 in this picture.
    centre = ((face[0] + face[2]) / 2, (face[1] + face[3]) / 2)
    assert 180 < centre[0] < 270 and 70 < centre[1] < 160
    assert contains(crop.box, face)
    assert is_square_inside(crop.box, astronaut.size)
    # Zoomed on the face: about FACE_EXPAND faces wide, not the whole picture.
    assert crop.side == pytest.approx(FACE_EXPAND * (face[2] - face[0]), abs=2)
    assert crop.side < 512


def test_no_face_found_in_a_picture_without_one() -> None:
    assert face_detector() is not None, "the train extra's face detector is missing"
    image = Image.fromarray(scene((300, 150), (240, 75)))
    assert find_subject(image).method == "saliency"


def test_face_box_spans_all_similar_faces_and_ignores_small_ones() -> None:
    image = Image.fromarray(scene((800, 400), None))
    faces = [(100, 100, 160, 160), (300, 120, 350, 170), (700, 20, 720, 40)]  # last: a stranger

    def detect(grey: np.ndarray) -> list[Box]:
        assert grey.dtype == np.uint8 and grey.ndim == 2
        scale = grey.shape[1] / 800  # faces are looked for on a reduced copy
        return [
            (round(a * scale), round(b * scale), round(c * scale), round(d * scale))
            for a, b, c, d in faces
        ]

    crop = find_subject(image, resolution=64, detector=detect)
    assert crop.method == "face"
    assert len(crop.faces) == 2  # the 20-px face is less than half the largest
    assert contains(crop.box, (100, 100, 350, 170))
    assert not contains(crop.box, faces[2])
    # 250 px of faces, expanded, capped by the 400-px short side.
    assert crop.side == 400
    assert is_square_inside(crop.box, image.size)


def test_face_crop_never_smaller_than_the_resolution() -> None:
    image = Image.fromarray(scene((1000, 800), None))

    def detect(grey: np.ndarray) -> list[Box]:
        scale = grey.shape[1] / 1000
        return [(round(480 * scale), round(380 * scale), round(520 * scale), round(420 * scale))]

    crop = find_subject(image, resolution=512, detector=detect)
    assert crop.method == "face"
    assert crop.side == 512  # 40 px face x 2.5 = 100 px would need upscaling
    left, top, right, bottom = crop.box
    assert (left + right) / 2 == pytest.approx(500, abs=2)
    assert (top + bottom) / 2 == pytest.approx(400, abs=2)


# --------------------------------------------------------------------------- saliency, centre


@pytest.mark.parametrize(
    ("size", "disc"),
    [((400, 200), (300, 100)), ((400, 200), (80, 60)), ((200, 400), (100, 320))],
)
def test_saliency_crop_follows_what_stands_out(
    size: tuple[int, int], disc: tuple[int, int]
) -> None:
    image = Image.fromarray(scene(size, disc, radius=25))
    crop = find_subject(image, detect_faces=False)
    assert crop.method == "saliency"
    assert crop.side == min(size)
    assert is_square_inside(crop.box, size)
    assert contains(crop.box, disc_box(disc, 25))
    # Off-centre, towards the disc.
    centred = find_subject(Image.fromarray(scene(size, None)), detect_faces=False).box
    assert crop.box != centred


def test_saliency_map_peaks_on_the_object() -> None:
    image = Image.fromarray(scene((256, 128), (200, 64), radius=16))
    saliency = saliency_map(image)
    assert saliency.shape == (32, 64)  # long side 64
    assert saliency.max() == pytest.approx(1.0)
    y, x = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    assert abs(x * 4 - 200) < 30 and abs(y * 4 - 64) < 30


def test_flat_and_square_pictures_get_the_centre() -> None:
    flat = Image.new("RGB", (300, 200), (90, 90, 90))
    assert saliency_map(flat).max() == 0.0
    crop = find_subject(flat, detect_faces=False)
    assert (crop.method, crop.box) == ("centre", (50, 0, 250, 200))
    square = Image.fromarray(scene((150, 150), (20, 20)))
    crop = find_subject(square, detect_faces=False)
    assert (crop.method, crop.box) == ("centre", (0, 0, 150, 150))


# --------------------------------------------------------------------------- files


def test_prepare_applies_exif_orientation_first(tmp_path: Path) -> None:
    upright = scene((300, 150), (250, 75))  # disc on the right when upright
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # 150x300 on disk
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.png"
    stored.save(path, exif=exif.tobytes())

    square, crop = prepare_image(path, 64, detect_faces=False)
    assert square.size == (64, 64)
    assert crop.size == (300, 150)  # upright size
    assert crop.method == "saliency"
    assert contains(crop.box, disc_box((250, 75), 20))
    # The crop is red where the disc is: the pixels came from the upright picture.
    red = np.asarray(square)[..., 0].astype(int) - np.asarray(square)[..., 1]
    assert red.max() > 150


def test_prepare_reports_full_size_boxes_for_reduced_decodes(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.fromarray(scene((1600, 800), (1300, 400), radius=100)).save(path, quality=90)
    square, crop = prepare_image(path, 64, detect_faces=False)
    assert square.size == (64, 64)
    assert crop.size == (1600, 800)
    assert crop.side == 800
    assert contains(crop.box, disc_box((1300, 400), 100))
    assert crop.to_dict()["box"] == list(crop.box)


def test_prepare_refuses_broken_files_and_bad_resolutions(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(ImageError):
        prepare_image(broken, 64)
    good = tmp_path / "good.png"
    Image.fromarray(scene((64, 64), None)).save(good)
    for resolution in (0, 16, 10_000):
        with pytest.raises(ConfigError):
            prepare_image(good, resolution)


def test_write_caption(tmp_path: Path) -> None:
    sidecar = write_caption(tmp_path / "0001.png", "  a photo\nof   sks dog ")
    assert sidecar == tmp_path / "0001.txt"
    assert sidecar.read_text(encoding="utf-8") == "a photo of sks dog\n"


# --------------------------------------------------------------------------- bucket crops


def test_crop_dict_stays_compatible() -> None:
    square = Crop((0, 0, 10, 10), "centre", (), (20, 10))
    assert "bucket" not in square.to_dict()
    bucketed = Crop((0, 0, 20, 8), "centre", (), (20, 10), (80, 32))
    assert bucketed.to_dict()["bucket"] == [80, 32]
    assert bucketed.to_dict()["box"] == [0, 0, 20, 8]


def test_bucket_crop_around_a_planted_face() -> None:
    image = Image.fromarray(scene((1200, 400), None))
    face = (900, 150, 960, 210)

    def detect(grey: np.ndarray) -> list[Box]:
        scale = grey.shape[1] / 1200
        a, b, c, d = (round(v * scale) for v in face)
        return [(a, b, c, d)]

    out, crop = bucket_crop(image, (96, 64), detector=detect)
    assert out.size == (96, 64) and out.mode == "RGB"
    assert crop.method == "face" and crop.bucket == (96, 64)
    left, top, right, bottom = crop.box
    # The largest 3:2 box: the full height, 600 wide, pushed right onto the face.
    assert (right - left, bottom - top) == (600, 400)
    expanded = (930 - 75, 180 - 75, 930 + 75, 180 + 75)  # FACE_EXPAND x the face
    assert contains(crop.box, expanded)
    assert left > 0  # moved off the centre (300..900) to take in the face


def test_bucket_crop_around_a_real_face() -> None:
    import skimage.data as skimage_data

    canvas = Image.fromarray(scene((1400, 512), None))
    canvas.paste(Image.fromarray(skimage_data.astronaut()), (860, 0))
    bucket = assign_bucket(*canvas.size, 256)
    out, crop = bucket_crop(canvas, bucket)
    assert out.size == bucket and bucket[0] > bucket[1]
    assert crop.method == "face"
    assert all(contains(crop.box, f) for f in crop.faces)
    assert crop.box[2] - crop.box[0] < 1400  # a real cut, placed on the right
    assert crop.box[0] > (1400 - (crop.box[2] - crop.box[0])) / 2


@pytest.mark.parametrize(
    ("size", "disc", "bucket"),
    [((400, 200), (330, 100), (64, 48)), ((200, 400), (100, 330), (48, 64))],
)
def test_bucket_crop_follows_a_salient_spot(
    size: tuple[int, int], disc: tuple[int, int], bucket: tuple[int, int]
) -> None:
    image = Image.fromarray(scene(size, disc, radius=25))
    out, crop = bucket_crop(image, bucket, detect_faces=False)
    assert out.size == bucket
    assert crop.method == "saliency"
    left, top, right, bottom = crop.box
    assert (right - left) / (bottom - top) == pytest.approx(bucket[0] / bucket[1], rel=0.02)
    assert left >= 0 and top >= 0 and right <= size[0] and bottom <= size[1]
    assert max(right - left, bottom - top) > min(size)  # the largest box, not a square
    assert contains(crop.box, disc_box(disc, 25))


def test_prepare_with_buckets(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.fromarray(scene((1600, 800), (1300, 400), radius=100)).save(path, quality=90)
    out, crop = prepare_image(path, 64, detect_faces=False, buckets=True)
    bucket = assign_bucket(1600, 800, 64)
    assert out.size == bucket == crop.bucket
    assert crop.to_dict()["bucket"] == list(bucket)
    assert crop.size == (1600, 800)  # full-size coordinates despite the reduced decode
    left, top, right, bottom = crop.box
    # The largest box of the bucket's aspect (to the decoded copy's pixel, 4 full-size).
    assert right - left == 1600
    assert bottom - top == pytest.approx(1600 * bucket[1] / bucket[0], abs=4)
    assert contains(crop.box, disc_box((1300, 400), 100))
    # Squares stay the default and unchanged.
    square, plain = prepare_image(path, 64, detect_faces=False)
    assert square.size == (64, 64) and plain.bucket is None


def test_prepare_with_buckets_never_upscales_past_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    Image.fromarray(scene((120, 90), (60, 45), radius=10)).save(path)
    out, crop = prepare_image(path, 512, detect_faces=False, buckets=True, max_upscale=2.0)
    assert crop.bucket is not None and out.size == crop.bucket
    assert max(out.size[0] / 120, out.size[1] / 90) <= 2.0
    assert out.size[0] % 64 == 0 and out.size[1] % 64 == 0


def test_prepare_with_buckets_turns_the_photo_upright_first(tmp_path: Path) -> None:
    stored = Image.fromarray(scene((300, 150), (250, 75))).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.png"
    stored.save(path, exif=exif.tobytes())
    out, crop = prepare_image(path, 64, detect_faces=False, buckets=True)
    assert crop.size == (300, 150)
    assert out.size[0] > out.size[1]  # a landscape bucket for the upright landscape
