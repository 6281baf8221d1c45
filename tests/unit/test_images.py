"""Photo decoding: formats, modes, orientation, EXIF, broken files, bombs, reduced decoding."""

from __future__ import annotations

import io
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import cast

import numpy as np
import pytest
from PIL import ExifTags, Image, TiffImagePlugin

from tests import photos
from vitdex.errors import ImageError, ImageTooLargeError
from vitdex.indexer.images import (
    SUPPORTED_EXTENSIONS,
    DecodedImage,
    ExifInfo,
    decode_image,
    register_optional_formats,
    to_rgb,
)

# Mean absolute difference (0..255) allowed against photos.reference_rgb. Lossless files must
# match exactly; lossy ones at q90 stay within a few levels, while a wrong picture (another
# seed, a wrong flip, black instead of white) is 20-130 levels away.
LOSSLESS_TOLERANCE = 0.01
LOSSY_TOLERANCE = 8.0


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32)).mean())


def pixels(decoded: DecodedImage) -> np.ndarray:
    return np.asarray(decoded.image)


@pytest.fixture(scope="module")
def formats(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return photos.make_all_formats(tmp_path_factory.mktemp("formats"))


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return photos.make_broken_files(tmp_path_factory.mktemp("broken"))


# --- formats and modes ---------------------------------------------------------------------


def test_supported_extensions() -> None:
    base = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp"}
    assert base <= SUPPORTED_EXTENSIONS
    assert all(ext == ext.lower() and ext.startswith(".") for ext in SUPPORTED_EXTENSIONS)
    if register_optional_formats():
        assert {".heic", ".heif"} <= SUPPORTED_EXTENSIONS


def test_register_optional_formats_is_idempotent() -> None:
    first = register_optional_formats()
    assert register_optional_formats() is first
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        assert first is False
    else:
        assert first is True


@pytest.mark.parametrize("name", sorted(photos.ALL_FORMATS))
def test_every_format_and_mode_decodes_to_upright_rgb(name: str, formats: dict[str, Path]) -> None:
    spec = photos.ALL_FORMATS[name]
    if name not in formats:
        reason = photos.heif_writable() if spec.needs == "heif" else photos.avif_writable()
        pytest.skip(f"cannot write {name} here: {reason}")
    decoded = decode_image(formats[name])

    assert decoded.image.mode == "RGB"
    assert decoded.format == spec.format
    assert (decoded.width, decoded.height) == spec.size
    assert decoded.image.size == spec.size
    expected = photos.reference_rgb(spec.size, spec.seed, spec.mode, transparency=spec.transparency)
    tolerance = LOSSY_TOLERANCE if spec.lossy else LOSSLESS_TOLERANCE
    assert mean_abs_diff(pixels(decoded), expected) <= tolerance
    # The same check against another picture must fail, or the tolerance proves nothing.
    other = photos.reference_rgb(
        spec.size, spec.seed + 1, spec.mode, transparency=spec.transparency
    )
    assert mean_abs_diff(pixels(decoded), other) > 2 * LOSSY_TOLERANCE


def test_transparent_pixels_become_white(formats: dict[str, Path]) -> None:
    # photos.render_alpha: the left quarter is fully transparent.
    for name in ("png_rgba", "png_la", "png_p_transparent", "webp_rgba"):
        left = pixels(decode_image(formats[name]))[:, :14]
        assert left.min() >= 250, name


def test_gif_uses_the_first_frame(formats: dict[str, Path]) -> None:
    with Image.open(formats["gif_animated"]) as gif:
        assert getattr(gif, "n_frames", 1) == 2
    decoded = pixels(decode_image(formats["gif_animated"]))
    first = photos.reference_rgb((64, 48), seed=0)
    second = photos.reference_rgb((64, 48), seed=1)
    assert mean_abs_diff(decoded, first) < LOSSY_TOLERANCE < mean_abs_diff(decoded, second)


def test_tiff_uses_the_first_page(formats: dict[str, Path]) -> None:
    with Image.open(formats["tiff_multipage"]) as tiff:
        assert getattr(tiff, "n_frames", 1) == 2
    decoded = pixels(decode_image(formats["tiff_multipage"]))
    assert mean_abs_diff(decoded, photos.reference_rgb((64, 48), seed=0)) == 0


def test_sixteen_bit_pngs_scale_instead_of_clipping(tmp_path: Path) -> None:
    grey = np.array([[0, 257, 32768, 65535]], dtype=np.uint16).repeat(2, axis=0)
    decoded = decode_image(photos.write_png16(tmp_path / "grey16.png", grey))
    assert pixels(decoded)[0, :, 0].tolist() == [0, 1, 128, 255]

    rgba = np.zeros((2, 2, 4), np.uint16)
    rgba[0] = [65535, 0, 32768, 65535]  # opaque colour
    rgba[1] = [0, 0, 0, 0]  # transparent black
    decoded = decode_image(photos.write_png16(tmp_path / "rgba16.png", rgba))
    assert pixels(decoded)[0, 0].tolist() == [255, 0, 128]
    assert pixels(decoded)[1, 0].tolist() == [255, 255, 255]


def test_jpeg_cmyk_colours(tmp_path: Path) -> None:
    # Pillow writes Adobe-style (inverted) CMYK JPEGs; its loader undoes the inversion.
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(path, quality=95)
    assert pixels(decode_image(path))[16, 16].tolist() == pytest.approx([255, 0, 0], abs=6)
    Image.new("CMYK", (32, 32), (0, 0, 0, 255)).save(path, quality=95)
    assert pixels(decode_image(path)).max() <= 6


def test_heic_round_trip(tmp_path: Path) -> None:
    reason = photos.heif_writable()
    if reason is not None:
        pytest.skip(reason)
    when = datetime(2023, 7, 14, 18, 30, 5)
    path = photos.make_photo(
        tmp_path / "p.heic", size=(96, 64), seed=4, orientation=6, taken_at=when
    )
    decoded = decode_image(path.read_bytes())
    assert decoded.format == "HEIF"
    assert (decoded.width, decoded.height) == (96, 64)
    assert decoded.exif.taken_at == when
    assert mean_abs_diff(pixels(decoded), photos.reference_rgb((96, 64), 4)) < LOSSY_TOLERANCE


def test_avif_round_trip(tmp_path: Path) -> None:
    reason = photos.avif_writable()
    if reason is not None:
        pytest.skip(reason)
    path = photos.make_photo(tmp_path / "p.avif", size=(96, 64), seed=5, orientation=8)
    decoded = decode_image(path)
    assert decoded.format == "AVIF"
    assert (decoded.width, decoded.height) == (96, 64)
    assert mean_abs_diff(pixels(decoded), photos.reference_rgb((96, 64), 5)) < LOSSY_TOLERANCE


# --- to_rgb ----------------------------------------------------------------------------------


def one_pixel(image: Image.Image) -> list[int]:
    out = to_rgb(image)
    assert out.mode == "RGB"
    return list(cast(tuple[int, int, int], out.getpixel((0, 0))))


def test_to_rgb_passes_rgb_through() -> None:
    image = Image.new("RGB", (2, 2), (1, 2, 3))
    assert to_rgb(image) is image


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("L", 77, [77, 77, 77]),
        ("1", 1, [255, 255, 255]),
        ("1", 0, [0, 0, 0]),
        ("RGBA", (0, 0, 0, 0), [255, 255, 255]),  # fully transparent black is white, not black
        ("RGBA", (0, 0, 0, 255), [0, 0, 0]),
        ("RGBA", (0, 0, 0, 128), [127, 127, 127]),
        ("RGBA", (200, 100, 0, 255), [200, 100, 0]),
        ("LA", (0, 0), [255, 255, 255]),
        ("LA", (40, 255), [40, 40, 40]),
        ("RGBa", (50, 50, 50, 128), [177, 177, 177]),  # premultiplied: 50 + 255 * 127/255
        ("La", (50, 128), [177, 177, 177]),
        ("CMYK", (0, 255, 255, 0), [255, 0, 0]),
        ("CMYK", (0, 0, 0, 255), [0, 0, 0]),
        ("HSV", (0, 255, 255), [255, 0, 0]),
        ("LAB", (255, 128, 128), [255, 255, 255]),
        ("RGBX", (9, 8, 7, 0), [9, 8, 7]),
        ("I;16", 32768, [128, 128, 128]),
        ("I;16", 65535, [255, 255, 255]),
        ("I;16B", 32768, [128, 128, 128]),
        ("I;16L", 65535, [255, 255, 255]),
        ("F", 0.5, [128, 128, 128]),
    ],
)
def test_to_rgb_modes(mode: str, value: int | tuple[int, ...] | float, expected: list[int]) -> None:
    assert one_pixel(Image.new(mode, (1, 1), value)) == pytest.approx(expected, abs=2)


def test_to_rgb_ycbcr_round_trip() -> None:
    ycbcr = Image.new("RGB", (1, 1), (200, 30, 40)).convert("YCbCr")
    assert one_pixel(ycbcr) == pytest.approx([200, 30, 40], abs=3)


def test_to_rgb_palette_with_and_without_transparency() -> None:
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 200, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    assert np.asarray(to_rgb(palette)).tolist() == [[[10, 20, 30], [200, 0, 0]]]
    palette.info["transparency"] = 0
    assert np.asarray(to_rgb(palette)).tolist() == [[[255, 255, 255], [200, 0, 0]]]
    pa = Image.new("PA", (1, 1), (1, 0))
    pa.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    assert one_pixel(pa) == [255, 255, 255]


def test_to_rgb_integer_and_float_ranges() -> None:
    def grey_row(image: Image.Image) -> list[int]:
        return [int(v) for v in np.asarray(to_rgb(image))[0, :, 0]]

    # 32-bit integers holding 16-bit data are scaled from 65535 ...
    assert grey_row(Image.fromarray(np.array([[0, 32768, 65535]], np.int32))) == [0, 128, 255]
    # ... holding 8-bit data stay as they are ...
    assert grey_row(Image.fromarray(np.array([[0, 100, 255]], np.int32))) == [0, 100, 255]
    # ... and anything else is stretched over its range.
    assert grey_row(Image.fromarray(np.array([[-1000, 0, 1000]], np.int32))) == [0, 128, 255]
    floats = np.array([[0.0, 0.25, 1.0, np.nan]], np.float32)
    assert grey_row(Image.fromarray(floats)) == [0, 64, 255, 0]
    assert grey_row(Image.fromarray(np.array([[0.0, 100.0, 255.0]], np.float32))) == [0, 100, 255]
    assert grey_row(Image.fromarray(np.array([[-1.0, 0.0, 1.0]], np.float32))) == [0, 128, 255]


def test_to_rgb_refuses_modes_without_rgb_meaning() -> None:
    class Odd:
        mode = "XYZ"
        has_transparency_data = False

        def convert(self, mode: str) -> Image.Image:
            raise ValueError(f"conversion from XYZ to {mode} not supported")

    with pytest.raises(ImageError, match="unsupported image mode XYZ"):
        to_rgb(cast(Image.Image, Odd()))


# --- orientation ---------------------------------------------------------------------------


def test_all_exif_orientations_come_out_upright(formats: dict[str, Path]) -> None:
    spec = photos.ALL_FORMATS["jpeg_orientation_1"]
    upright = pixels(decode_image(formats["jpeg_orientation_1"]))
    for orientation in range(1, 9):
        path = formats[f"jpeg_orientation_{orientation}"]
        with Image.open(path) as stored:
            raw = np.asarray(stored.convert("RGB"))
        decoded = decode_image(path)
        assert decoded.exif.orientation == orientation
        assert (decoded.width, decoded.height) == spec.size
        assert decoded.image.size == spec.size
        assert mean_abs_diff(pixels(decoded), upright) < 3.0, orientation
        if orientation in (5, 6, 7, 8):
            assert raw.shape[:2] == (spec.size[0], spec.size[1])  # stored sideways
        elif orientation != 1:
            assert mean_abs_diff(raw, upright) > 20, orientation  # really was flipped


def test_orientation_applies_to_png_and_webp_exif(tmp_path: Path) -> None:
    for suffix in (".png", ".webp"):
        path = photos.make_photo(tmp_path / f"o{suffix}", size=(64, 48), seed=2, orientation=6)
        decoded = decode_image(path)
        assert (decoded.width, decoded.height) == (64, 48), suffix
        tolerance = LOSSLESS_TOLERANCE if suffix == ".png" else LOSSY_TOLERANCE
        assert mean_abs_diff(pixels(decoded), photos.reference_rgb((64, 48), 2)) <= tolerance


# --- EXIF ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif"])
def test_exif_fields(tmp_path: Path, suffix: str) -> None:
    when = datetime(2019, 12, 31, 23, 59, 58)
    path = photos.make_photo(
        tmp_path / f"exif{suffix}",
        taken_at=when,
        camera=("FUJIFILM", "X-T3"),
        gps=(-33.856784, -151.215297),
        orientation=3,
    )
    exif = decode_image(path).exif
    assert exif.taken_at == when
    assert (exif.camera_make, exif.camera_model) == ("FUJIFILM", "X-T3")
    assert exif.gps_lat == pytest.approx(-33.856784, abs=1e-5)
    assert exif.gps_lon == pytest.approx(-151.215297, abs=1e-5)
    if suffix != ".tif":  # Pillow's TIFF loader turns the image itself and drops the tag
        assert exif.orientation == 3


def test_exif_north_east_is_positive(tmp_path: Path) -> None:
    path = photos.make_photo(tmp_path / "ne.jpg", gps=(60.1699, 24.9384))
    exif = decode_image(path).exif
    assert exif.gps_lat == pytest.approx(60.1699, abs=1e-5)
    assert exif.gps_lon == pytest.approx(24.9384, abs=1e-5)


def test_no_exif_gives_all_none(formats: dict[str, Path]) -> None:
    assert decode_image(formats["png_rgb"]).exif == ExifInfo()


def _jpeg_with_exif(path: Path, exif: Image.Exif | bytes) -> Path:
    Image.fromarray(photos.render((32, 24), 1)).save(path, "JPEG", exif=exif)
    return path


def test_exif_odd_values(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Canon\x00\x00  "
    exif[ExifTags.Base.Model] = "   "
    exif[ExifTags.Base.Orientation] = 9  # out of range
    exif[ExifTags.Base.DateTime] = "2001:02:03 04:05:06"
    exif[ExifTags.IFD.Exif] = {
        ExifTags.Base.DateTimeOriginal: "0000:00:00 00:00:00",  # placeholder: ignored
        ExifTags.Base.DateTimeDigitized: "2001:02:03 04:05:07",
    }
    exif[ExifTags.IFD.GPSInfo] = {  # no fix: zero denominators, and latitude only
        ExifTags.GPS.GPSLatitudeRef: "N",
        ExifTags.GPS.GPSLatitude: (
            TiffImagePlugin.IFDRational(0, 0),
            TiffImagePlugin.IFDRational(0, 0),
            TiffImagePlugin.IFDRational(0, 0),
        ),
    }
    decoded = decode_image(_jpeg_with_exif(tmp_path / "odd.jpg", exif))
    assert decoded.exif == ExifInfo(taken_at=datetime(2001, 2, 3, 4, 5, 7), camera_make="Canon")
    assert decoded.image.size == (32, 24)


@pytest.mark.parametrize(
    "payload",
    [
        b"Exif\x00\x00MM\x00\x2a\xff\xff\xff\xf0garbage",  # IFD offset past the end
        b"Exif\x00\x00II\x2a\x00\x08\x00\x00\x00\xff\xff" + bytes(range(256)) * 4,
        b"Exif\x00\x00" + bytes(np.random.default_rng(5).integers(0, 256, 500, np.uint8)),
        b"Exif\x00\x00",
    ],
)
def test_corrupt_exif_does_not_fail_the_decode(tmp_path: Path, payload: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow may warn about the corrupt block
        decoded = decode_image(_jpeg_with_exif(tmp_path / "corrupt.jpg", payload))
    assert decoded.image.size == (32, 24)
    assert decoded.exif.taken_at is None


# --- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("empty", "empty file"),
        ("truncated", "truncated or corrupt image data"),
        ("text", "not an image (unrecognised format)"),
        ("garbage", "not an image (unrecognised format)"),
    ],
)
def test_broken_files_raise_image_error(broken: dict[str, Path], name: str, reason: str) -> None:
    for source in (broken[name], broken[name].read_bytes()):
        with pytest.raises(ImageError) as info:
            decode_image(source)
        assert not isinstance(info.value, ImageTooLargeError)
        assert info.value.message.startswith(reason)


def test_truncated_jpeg_is_caught_even_with_draft(broken: dict[str, Path]) -> None:
    with pytest.raises(ImageError, match="truncated"):
        decode_image(broken["truncated"], min_size=(8, 8))


def test_bomb_raises_too_large(broken: dict[str, Path]) -> None:
    assert broken["bomb"].stat().st_size < 100_000
    with pytest.raises(ImageTooLargeError, match=r"400\.0 MP > VITDEX_MAX_MEGAPIXELS=100"):
        decode_image(broken["bomb"])


def test_own_size_check_does_not_rely_on_pillow_global(
    broken: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's guard off
    started = time.perf_counter()
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(broken["bomb"])
    assert (
        info.value.message
        == "file is too large: 20000x20000 = 400.0 MP > VITDEX_MAX_MEGAPIXELS=100"
    )
    assert time.perf_counter() - started < 1.0  # refused from the header, not after decoding


def test_size_is_checked_before_pixels(broken: dict[str, Path], tmp_path: Path) -> None:
    # A truncated file over the limit reports the limit: no pixel was decoded.
    with pytest.raises(
        ImageTooLargeError, match=r"256x192 = 0\.0492 MP > VITDEX_MAX_MEGAPIXELS=0\.01"
    ):
        decode_image(broken["truncated"], max_megapixels=0.01)
    path = photos.make_photo(tmp_path / "ok.png", size=(100, 100))
    assert decode_image(path, max_megapixels=0.01).image.size == (100, 100)  # exactly at it
    with pytest.raises(ImageTooLargeError):
        decode_image(path, max_megapixels=0.0099)


def test_refused_file_leaves_no_pillow_bomb_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the limit and twice it Pillow only warns; vitdex refuses such a file with
    its own reason, so Pillow's warning is noise in the user's output."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    wide = photos.make_bomb_png(tmp_path / "wide.png", size=(15000, 10000))  # 150 MP
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageTooLargeError, match=r"150\.0 MP > VITDEX_MAX_MEGAPIXELS=100"):
            decode_image(wide)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    # Only where vitdex decided: Pillow's warning still reaches code outside the decoder.
    with pytest.warns(Image.DecompressionBombWarning):
        Image.open(wide).close()


def test_higher_limit_than_pillows_own_guard_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pillow refuses past 2 x MAX_IMAGE_PIXELS (~179 MP by default) on its own; a user who
    # sets VITDEX_MAX_MEGAPIXELS higher on purpose must get what they asked for.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    panorama = photos.make_bomb_png(tmp_path / "pano.png", size=(15000, 15000))  # 225 MP
    with pytest.raises(ImageTooLargeError, match=r"225\.0 MP > VITDEX_MAX_MEGAPIXELS=100"):
        decode_image(panorama)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        decoded = decode_image(panorama, max_megapixels=300, min_size=(224, 224))
    assert (decoded.width, decoded.height) == (15000, 15000)
    assert decoded.image.size[0] >= 448
    assert Image.MAX_IMAGE_PIXELS == 300_000_000
    decode_image(panorama, max_megapixels=250, min_size=(224, 224))
    assert Image.MAX_IMAGE_PIXELS == 300_000_000  # raised, never lowered


def test_missing_and_unreadable_paths(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"^file not found"):
        decode_image(tmp_path / "gone.jpg")
    with pytest.raises(ImageError, match=r"^cannot read file"):
        decode_image(tmp_path)


def test_formats_outside_the_allow_list_are_refused(tmp_path: Path) -> None:
    # Pillow itself could open these; vitdex only hands photo formats to Pillow.
    for fmt, suffix in (("ICO", ".ico"), ("PPM", ".ppm"), ("TGA", ".tga")):
        path = tmp_path / f"x{suffix}"
        Image.new("RGB", (16, 16), (1, 2, 3)).save(path, fmt)
        with pytest.raises(ImageError, match="unrecognised format"):
            decode_image(path)


def test_damaged_files_only_ever_raise_image_error(formats: dict[str, Path]) -> None:
    """Cut and scribble over real files: every outcome is a decode or an ImageError."""
    rng = np.random.default_rng(11)
    outcomes = {"decoded": 0, "refused": 0}
    for name in ("jpeg_rgb", "png_rgba", "gif_animated", "tiff_multipage", "webp", "bmp"):
        data = formats[name].read_bytes()
        for _ in range(8):
            damaged = bytearray(data)
            cut = int(rng.integers(16, len(data)))
            for pos in rng.integers(8, cut, size=4):
                damaged[pos] = int(rng.integers(0, 256))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    decoded = decode_image(bytes(damaged[:cut]), max_megapixels=1)
            except ImageError:
                outcomes["refused"] += 1
            else:
                assert decoded.image.mode == "RGB"
                outcomes["decoded"] += 1
    assert outcomes["refused"] > 0


def test_files_are_closed(formats: dict[str, Path]) -> None:
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.exists():
        pytest.skip("needs /proc/self/fd")
    before = len(list(fd_dir.iterdir()))
    for name in ("jpeg_rgb", "gif_animated", "tiff_multipage", "png_rgba", "webp"):
        decoded = decode_image(formats[name])
        decoded.image.load()
    assert len(list(fd_dir.iterdir())) == before


# --- bytes vs path, reduced decoding -------------------------------------------------------


def test_bytes_and_path_give_the_same_result(formats: dict[str, Path]) -> None:
    for name in ("jpeg_orientation_6", "png_rgba", "tiff_multipage", "gif_animated"):
        from_path = decode_image(formats[name], min_size=(8, 8))
        from_bytes = decode_image(formats[name].read_bytes(), min_size=(8, 8))
        assert from_path.exif == from_bytes.exif
        assert (from_path.width, from_path.height, from_path.format) == (
            from_bytes.width,
            from_bytes.height,
            from_bytes.format,
        )
        assert np.array_equal(pixels(from_path), pixels(from_bytes))


def test_jpeg_draft_reduces_but_reports_full_size(tmp_path: Path) -> None:
    path = photos.make_photo(tmp_path / "big.jpg", size=(1600, 1200), seed=9)
    decoded = decode_image(path, min_size=(100, 100))
    # 1600/200 = 8, 1200/200 = 6: the largest power-of-two reduction that fits is 1/4.
    assert decoded.image.size == (400, 300)
    assert (decoded.width, decoded.height) == (1600, 1200)
    reference = photos.reference_rgb((400, 300), 9)
    assert mean_abs_diff(pixels(decoded), reference) < LOSSY_TOLERANCE
    assert decode_image(path, min_size=(300, 300)).image.size == (800, 600)  # 1/2
    assert decode_image(path, min_size=(700, 700)).image.size == (1600, 1200)  # none
    assert decode_image(path).image.size == (1600, 1200)


def test_jpeg_draft_accounts_for_rotation(tmp_path: Path) -> None:
    # Upright 1600x400, stored 400x1600 with orientation 6. Asking for 150 px of height
    # means 300 stored columns: reducing the stored 400 columns at all would undershoot.
    tall = photos.make_photo(tmp_path / "pano.jpg", size=(1600, 400), seed=3, orientation=6)
    decoded = decode_image(tall, min_size=(50, 150))
    assert (decoded.width, decoded.height) == (1600, 400)
    assert decoded.image.width >= 100 and decoded.image.height >= 300
    assert decoded.image.size == (1600, 400)

    rotated = photos.make_photo(tmp_path / "r.jpg", size=(1600, 1200), seed=3, orientation=8)
    decoded = decode_image(rotated, min_size=(100, 100))
    assert (decoded.width, decoded.height) == (1600, 1200)
    assert decoded.image.size == (400, 300)
    assert mean_abs_diff(pixels(decoded), photos.reference_rgb((400, 300), 3)) < LOSSY_TOLERANCE


def test_cmyk_and_grey_jpegs_draft_too(tmp_path: Path) -> None:
    for mode in ("CMYK", "L"):
        path = photos.make_photo(tmp_path / f"{mode}.jpg", size=(800, 800), mode=mode)
        decoded = decode_image(path, min_size=(50, 50))
        assert decoded.image.size == (100, 100) and decoded.image.mode == "RGB"


def test_other_formats_are_box_reduced_when_far_too_large(tmp_path: Path) -> None:
    path = photos.make_photo(tmp_path / "big.png", size=(1000, 800), seed=6, mode="RGBA")
    decoded = decode_image(path, min_size=(50, 50))
    # 1000/100 = 10, 800/100 = 8 -> reduced by 8, still >= 2 * min_size.
    assert decoded.image.size == (125, 100)
    assert (decoded.width, decoded.height) == (1000, 800)
    reference = photos.reference_rgb((125, 100), 6, "RGBA")
    assert mean_abs_diff(pixels(decoded), reference) < LOSSY_TOLERANCE
    # Less than 4x too large: left alone (the caller's resize does better).
    assert decode_image(path, min_size=(150, 150)).image.size == (1000, 800)


def test_camera_jpeg_draft_decode(tmp_path: Path) -> None:
    """A 12 MP camera JPEG decodes via draft to >= 448x448 and reports its full size.

    Measured on the 2-core development machine (median of 9, one thread, 3.8 MB q90 file
    from photos.make_camera_jpeg): full decode_image 75-82 ms (plain Image.open + load:
    59-75 ms); with min_size=(224, 224) (1/4 DCT scaling to 1000x750) 38-42 ms; full decode
    + bicubic resize to 224x224 115-240 ms, draft decode + the same resize 43-45 ms. Not
    asserted: timings on these shared machines drift 2-3x.
    """
    path = photos.make_camera_jpeg(tmp_path / "camera.jpg")
    assert 2_000_000 < path.stat().st_size < 5_000_000
    decoded = decode_image(path.read_bytes(), min_size=(224, 224))
    assert decoded.image.size == (1000, 750)
    assert (decoded.width, decoded.height) == (4000, 3000)


def test_decoded_image_from_a_bytes_buffer_does_not_keep_the_buffer() -> None:
    data = io.BytesIO()
    Image.fromarray(photos.render((64, 48), 0)).save(data, "PNG")
    decoded = decode_image(data.getvalue())
    # A plain image, independent of the source stream.
    assert type(decoded.image) is Image.Image


def test_degenerate_min_size_is_harmless(formats: dict[str, Path]) -> None:
    decoded = decode_image(formats["jpeg_rgb"], min_size=(0, 0))
    assert decoded.image.size == (2, 1)  # 1/8 draft, then box-reduced: any size will do
    assert (decoded.width, decoded.height) == (64, 48)


def test_heic_without_pillow_heif_says_what_is_missing(
    formats: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    if "heic" not in formats:
        pytest.skip(f"cannot write HEIC here: {photos.heif_writable()}")
    from vitdex.indexer import images

    monkeypatch.setattr(images, "_registered", False)  # as if pillow-heif were absent
    with pytest.raises(ImageError, match="needs pillow-heif"):
        decode_image(formats["heic"])


# --- colour profiles -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF", "HEIF", "AVIF"])
def test_a_wide_gamut_photo_is_converted_to_srgb(tmp_path: Path, fmt: str) -> None:
    why_not = {"HEIF": photos.heif_writable, "AVIF": photos.avif_writable}.get(fmt)
    if why_not is not None and (reason := why_not()) is not None:
        pytest.skip(f"cannot write {fmt} here: {reason}")
    # The same scene stored as a phone stores it: Display P3 values, tagged as such.
    srgb = photos.render((96, 64), 3)
    icc = photos.display_p3_profile()
    stored = photos.srgb_to_profile(srgb, icc)
    assert mean_abs_diff(stored, srgb) > 3  # the stored values really differ
    path = tmp_path / f"p3.{fmt.lower()}"
    register_optional_formats()
    Image.fromarray(stored).save(path, fmt, icc_profile=icc, quality=95)

    got = pixels(decode_image(path))
    # Back to the sRGB colours the scene has, within the round trip and compression.
    tolerance = LOSSLESS_TOLERANCE + 1.0 if fmt in ("PNG", "TIFF") else LOSSY_TOLERANCE
    assert mean_abs_diff(got, srgb) < tolerance
    assert mean_abs_diff(got, srgb) < mean_abs_diff(stored, srgb) / 2


def test_a_reduced_decode_is_converted_too(tmp_path: Path) -> None:
    srgb = photos.render((1600, 1200), 4)
    icc = photos.display_p3_profile()
    path = tmp_path / "p3.jpg"
    Image.fromarray(photos.srgb_to_profile(srgb, icc)).save(path, quality=95, icc_profile=icc)
    got = decode_image(path, min_size=(224, 224))
    assert got.image.size == (800, 600)
    want = np.asarray(Image.fromarray(srgb).resize((800, 600), Image.Resampling.BOX))
    assert mean_abs_diff(pixels(got), want) < LOSSY_TOLERANCE


def test_an_srgb_profile_leaves_pixels_untouched(tmp_path: Path) -> None:
    from PIL import ImageCms

    rgb = photos.render((64, 48), 5)
    srgb_icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    tagged, plain = tmp_path / "tagged.png", tmp_path / "plain.png"
    Image.fromarray(rgb).save(tagged, icc_profile=srgb_icc)
    Image.fromarray(rgb).save(plain)
    assert np.array_equal(pixels(decode_image(tagged)), pixels(decode_image(plain)))
    assert np.array_equal(pixels(decode_image(tagged)), rgb)


def test_a_broken_profile_is_ignored_not_fatal(tmp_path: Path) -> None:
    rgb = photos.render((64, 48), 6)
    path = tmp_path / "broken-icc.png"
    Image.fromarray(rgb).save(path, icc_profile=b"not an ICC profile at all" * 8)
    assert np.array_equal(pixels(decode_image(path)), rgb)


def test_a_grey_photo_with_an_rgb_profile_keeps_its_grey(tmp_path: Path) -> None:
    # A greyscale image cannot carry an RGB profile's meaning: the profile is ignored.
    grey = photos.render((64, 48), 7).mean(axis=2).astype(np.uint8)
    path = tmp_path / "grey.png"
    Image.fromarray(grey, "L").save(path, icc_profile=photos.display_p3_profile())
    got = pixels(decode_image(path))
    for channel in range(3):
        assert np.array_equal(got[..., channel], grey)
