"""Generated test photos: every format, mode and EXIF variant vitdex meets, plus broken files.

Nothing here is downloaded; every picture is drawn from a seed, so tests are reproducible:

- :func:`render` draws the upright RGB picture for ``(size, seed)``: a gradient, stripes and a
  few filled rectangles and ellipses. Shapes sit at positions relative to the size, so the same
  seed at another size is the same scene (handy when comparing a reduced decode), and different
  seeds give clearly different pictures (and so different embeddings).
- :func:`make_photo` saves that picture in any format / mode with any EXIF.
- :func:`reference_rgb` is what a *correct* decoder returns for a photo made by
  :func:`make_photo` (upright, transparency composited over white, 16-bit scaled to 8-bit),
  before any lossy compression. Compare decodes against it with a tolerance that suits the
  format (lossless: ~0; JPEG/WebP q90: a few levels).
- :func:`make_all_formats`, :func:`make_broken_files` and :func:`make_camera_jpeg` build the
  fixture sets that the unit, pipeline and benchmark code use.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, TiffImagePlugin

Size = tuple[int, int]

#: File suffix -> the Pillow format name used to save it.
SUFFIX_FORMATS: dict[str, str] = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jpe": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".gif": "GIF",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".heic": "HEIF",
    ".heif": "HEIF",
    ".avif": "AVIF",
}

#: Modes :func:`make_photo` can write. "RGB;16" is a 16-bit-per-channel RGB PNG (PNG only),
#: "I" and "F" are 32-bit integer / float greyscale (TIFF only).
MODES = ("RGB", "L", "1", "P", "RGBA", "LA", "PA", "CMYK", "I;16", "I", "F", "RGB;16")

#: Orientation tag value -> the transpose that *undoes* it when writing, i.e. the stored
#: pixels are ``upright.transpose(_STORE[o])`` so that EXIF-aware viewers show ``upright``.
_STORE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def heif_writable() -> str | None:
    """Return ``None`` when HEIC files can be written here, else the reason they cannot."""
    try:
        import pillow_heif
    except ImportError:
        return "pillow-heif is not installed"
    if not pillow_heif.libheif_info().get("HEIF"):
        return "this libheif build has no HEVC encoder"
    pillow_heif.register_heif_opener()
    return None


def avif_writable() -> str | None:
    """Return ``None`` when AVIF files can be written here, else the reason they cannot."""
    Image.init()
    if "AVIF" in Image.SAVE:
        return None
    return "neither Pillow's AVIF plugin nor an AVIF-capable pillow-heif is available"


# --- drawing -------------------------------------------------------------------------------


def render(size: Size, seed: int = 0) -> np.ndarray:
    """Draw the upright picture for ``seed`` as a ``(height, width, 3)`` uint8 array.

    Deterministic: the same ``(size, seed)`` always gives identical pixels.
    """
    width, height = size
    rng = np.random.default_rng(seed)
    # Pixel centres in [0, 1] so the scene does not depend on the resolution.
    xs = ((np.arange(width, dtype=np.float32) + 0.5) / width)[None, :]
    ys = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None]

    angle = rng.uniform(0, 2 * np.pi)
    ramp = (
        np.cos(angle) * xs + np.sin(angle) * ys - min(0.0, np.cos(angle)) - min(0.0, np.sin(angle))
    )
    ramp = ramp / (abs(np.cos(angle)) + abs(np.sin(angle)))
    start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = start[None, None, :] * (1 - ramp[..., None]) + end[None, None, :] * ramp[..., None]

    # Stripes of a seed-dependent frequency and direction in one channel: texture for the model.
    freq, phase, channel = rng.uniform(2, 6), rng.uniform(0, 2 * np.pi), int(rng.integers(3))
    direction = rng.uniform(0, np.pi)
    wave = np.sin(2 * np.pi * freq * (np.cos(direction) * xs + np.sin(direction) * ys) + phase)
    img[..., channel] += 30 * wave

    for _ in range(int(rng.integers(3, 6))):
        x0, y0 = rng.uniform(0, 0.8), rng.uniform(0, 0.8)
        w, h = rng.uniform(0.15, 0.5), rng.uniform(0.15, 0.5)
        colour = rng.uniform(0, 255, 3)
        if rng.random() < 0.5:
            mask = (xs >= x0) & (xs < x0 + w) & (ys >= y0) & (ys < y0 + h)
        else:
            cx, cy = x0 + w / 2, y0 + h / 2
            mask = ((xs - cx) / (w / 2)) ** 2 + ((ys - cy) / (h / 2)) ** 2 <= 1.0
        img[mask] = colour
    out: np.ndarray = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out


def render_alpha(size: Size) -> np.ndarray:
    """The alpha pattern of transparent test photos, ``(height, width)`` uint8.

    Fully transparent in the left quarter, opaque in the right half, a ramp in between.
    """
    width, height = size
    xs = (np.arange(width, dtype=np.float32) + 0.5) / width
    row = np.clip((xs - 0.25) / 0.25, 0.0, 1.0)
    row = np.where(xs < 0.25, 0.0, row)
    return np.broadcast_to(np.rint(row * 255).astype(np.uint8), (height, width)).copy()


def _grey(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb, "RGB").convert("L"))


def _palette_image(rgb: np.ndarray, alpha: np.ndarray | None) -> Image.Image:
    """Quantise to at most 255 colours; with ``alpha`` reserve index 255 for transparency."""
    pal = Image.fromarray(rgb, "RGB").quantize(colors=255, method=Image.Quantize.MEDIANCUT)
    if alpha is not None:
        idx = np.asarray(pal).copy()
        idx[alpha < 128] = 255
        out = Image.fromarray(idx, "L").convert("P")
        palette = pal.getpalette() or []
        out.putpalette([*(palette + [0] * 768)[:765], 0, 255, 0])  # index 255: green, hidden
        out.info["transparency"] = 255
        return out
    return pal


def _stored_image(rgb: np.ndarray, mode: str, transparency: bool) -> Image.Image:
    """Turn the upright RGB picture into the Pillow image that gets saved for ``mode``."""
    size = (rgb.shape[1], rgb.shape[0])
    alpha = render_alpha(size)
    rgb_img = Image.fromarray(rgb, "RGB")
    if mode == "RGB":
        return rgb_img
    if mode == "L":
        return rgb_img.convert("L")
    if mode == "1":
        return rgb_img.convert("L").convert("1")
    if mode == "P":
        return _palette_image(rgb, alpha if transparency else None)
    if mode == "RGBA":
        return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    if mode == "LA":
        return Image.fromarray(np.dstack([_grey(rgb), alpha]))
    if mode == "PA":
        pal = _palette_image(rgb, None)
        pa = pal.convert("PA")
        pa.putalpha(Image.fromarray(alpha, "L"))
        return pa
    if mode == "CMYK":
        return rgb_img.convert("CMYK")
    if mode == "I;16":
        return Image.fromarray(_grey(rgb).astype(np.uint16) * 257)
    if mode == "I":
        return Image.fromarray(_grey(rgb).astype(np.int32) * 257)
    if mode == "F":
        return Image.fromarray(_grey(rgb).astype(np.float32) / 255.0)
    raise ValueError(f"make_photo cannot write mode {mode!r}; use one of {MODES}")


def reference_rgb(
    size: Size = (64, 48), seed: int = 0, mode: str = "RGB", *, transparency: bool = False
) -> np.ndarray:
    """What a correct decoder returns for ``make_photo(size=size, seed=seed, mode=mode)``.

    Upright (orientation undone), ``(height, width, 3)`` uint8: transparent pixels composited
    over white, greyscale repeated into three channels, 16-bit and float scaled to 8 bits.
    Lossy formats (JPEG, WebP, HEIC, AVIF, and GIF's palette) differ from it by their error.
    """
    rgb = render(size, seed)
    if mode in ("RGB", "RGB;16", "CMYK"):
        return rgb
    if mode in ("L", "I;16", "I", "F"):
        return np.repeat(_grey(rgb)[..., None], 3, axis=2)
    stored = _stored_image(rgb, mode, transparency)
    if mode == "1":
        return np.asarray(stored.convert("RGB"))
    if mode == "P" and not transparency:
        return np.asarray(stored.convert("RGB"))
    # Alpha modes: composite the stored colours over white with the stored alpha.
    if mode == "P":
        colours = np.asarray(stored.convert("RGB")).astype(np.uint32)
        alpha = np.where(np.asarray(stored) == 255, 0, 255).astype(np.uint32)
    elif mode == "PA":
        colours = np.asarray(stored.convert("RGB")).astype(np.uint32)
        alpha = render_alpha(size).astype(np.uint32)
    elif mode == "LA":
        colours = np.repeat(_grey(rgb)[..., None], 3, axis=2).astype(np.uint32)
        alpha = render_alpha(size).astype(np.uint32)
    elif mode == "RGBA":
        colours = rgb.astype(np.uint32)
        alpha = render_alpha(size).astype(np.uint32)
    else:
        raise ValueError(f"no reference for mode {mode!r}")
    a = alpha[..., None]
    out = (colours * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


# --- EXIF ----------------------------------------------------------------------------------


def _dms(value: float) -> tuple[TiffImagePlugin.IFDRational, ...]:
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = Fraction((value - degrees - minutes / 60) * 3600).limit_denominator(10000)
    return (
        TiffImagePlugin.IFDRational(degrees, 1),
        TiffImagePlugin.IFDRational(minutes, 1),
        TiffImagePlugin.IFDRational(seconds.numerator, seconds.denominator),
    )


def build_exif(
    *,
    orientation: int | None = None,
    taken_at: datetime | None = None,
    camera: tuple[str, str] | None = None,
    gps: tuple[float, float] | None = None,
) -> Image.Exif:
    """An EXIF block with the given orientation, capture time, camera and GPS position.

    ``taken_at`` goes to DateTimeOriginal (Exif IFD) and DateTime (IFD0), as cameras write it.
    """
    exif = Image.Exif()
    if orientation is not None:
        exif[ExifTags.Base.Orientation] = orientation
    if camera is not None:
        exif[ExifTags.Base.Make], exif[ExifTags.Base.Model] = camera
    if taken_at is not None:
        stamp = taken_at.strftime("%Y:%m:%d %H:%M:%S")
        exif[ExifTags.Base.DateTime] = stamp
        exif[ExifTags.IFD.Exif] = {
            ExifTags.Base.DateTimeOriginal: stamp,
            ExifTags.Base.DateTimeDigitized: stamp,
        }
    if gps is not None:
        lat, lon = gps
        exif[ExifTags.IFD.GPSInfo] = {
            ExifTags.GPS.GPSVersionID: b"\x02\x03\x00\x00",
            ExifTags.GPS.GPSLatitudeRef: "S" if lat < 0 else "N",
            ExifTags.GPS.GPSLatitude: _dms(lat),
            ExifTags.GPS.GPSLongitudeRef: "W" if lon < 0 else "E",
            ExifTags.GPS.GPSLongitude: _dms(lon),
        }
    return exif


# --- writing -------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def write_png16(path: Path, pixels: np.ndarray, exif: bytes | None = None) -> Path:
    """Write a 16-bit-per-sample PNG (Pillow cannot): ``pixels`` is uint16 (h, w[, 1..4])."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    height, width, channels = pixels.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = pixels.astype(">u2").view(np.uint8).reshape(height, width * channels * 2)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # filter 0 per row
    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
    if exif:
        data += _png_chunk(b"eXIf", exif)
    data += _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + _png_chunk(b"IEND", b"")
    path.write_bytes(data)
    return path


def _format_for(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        return fmt.upper()
    try:
        return SUFFIX_FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"cannot tell the format of {path.name}; pass fmt=") from None


def _save(img: Image.Image, path: Path, fmt: str, quality: int, exif: bytes | None) -> None:
    params: dict[str, object] = {}
    if exif and fmt != "BMP" and fmt != "GIF":
        params["exif"] = exif
    if fmt in ("JPEG", "WEBP", "HEIF", "AVIF"):
        params["quality"] = quality
    if fmt == "HEIF" and heif_writable() is not None:
        raise RuntimeError(f"cannot write HEIC: {heif_writable()}")
    img.save(path, fmt, **params)


def make_photo(
    path: Path,
    *,
    size: Size = (64, 48),
    seed: int = 0,
    fmt: str | None = None,
    mode: str = "RGB",
    quality: int = 90,
    orientation: int | None = None,
    taken_at: datetime | None = None,
    camera: tuple[str, str] | None = None,
    gps: tuple[float, float] | None = None,
    transparency: bool = False,
) -> Path:
    """Draw :func:`render` ``(size, seed)`` and save it at ``path``; return ``path``.

    ``size`` is the *upright* size: with ``orientation`` 5..8 the stored pixels are rotated
    (height x width) and the EXIF tag tells viewers to turn them back. ``fmt`` defaults to the
    suffix's format. ``mode`` is one of :data:`MODES`; alpha modes carry :func:`render_alpha`,
    and ``transparency=True`` gives a ``"P"`` photo a transparent palette index for that
    pattern's transparent half. ``camera`` is ``(make, model)``, ``gps`` is ``(lat, lon)`` in
    signed decimal degrees. :func:`reference_rgb` gives the pixels a decoder should return.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = _format_for(path, fmt)
    exif = build_exif(orientation=orientation, taken_at=taken_at, camera=camera, gps=gps)
    exif_bytes = exif.tobytes() if len(exif) else None

    rgb = render(size, seed)
    if orientation is not None and orientation in _STORE:
        rgb = np.asarray(Image.fromarray(rgb, "RGB").transpose(_STORE[orientation]))

    if mode == "RGB;16":
        if fmt != "PNG":
            raise ValueError("mode 'RGB;16' is written as PNG only")
        return write_png16(path, rgb.astype(np.uint16) * 257, exif_bytes)
    img = _stored_image(rgb, mode, transparency)
    _save(img, path, fmt, quality, exif_bytes)
    return path


def make_frames(
    path: Path, *, size: Size = (64, 48), seeds: Sequence[int] = (0, 1), fmt: str | None = None
) -> Path:
    """Save one frame / page per seed: an animated GIF or WebP, or a multi-page TIFF."""
    path = Path(path)
    fmt = _format_for(path, fmt)
    frames = [Image.fromarray(render(size, s), "RGB") for s in seeds]
    if fmt == "GIF":
        frames = [f.quantize(colors=255, method=Image.Quantize.MEDIANCUT) for f in frames]
        frames[0].save(path, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    else:
        frames[0].save(path, fmt, save_all=True, append_images=frames[1:])
    return path


def make_camera_jpeg(
    path: Path, size: Size = (4000, 3000), seed: int = 0, quality: int = 90
) -> Path:
    """A camera-sized, photo-like JPEG (smooth scene + sensor-like noise), ~2-5 MB at 12 MP.

    Built with numpy and Pillow's resampling, so a 12 MP file takes well under a second.
    """
    path = Path(path)
    width, height = size
    rng = np.random.default_rng(seed)
    # The scene: a small rendered picture blown up with a smooth filter, like out-of-focus
    # structure, then fine noise on top so the encoder has real detail to spend bits on.
    scene = Image.fromarray(render((max(8, width // 50), max(8, height // 50)), seed), "RGB")
    scene = scene.resize(size, Image.Resampling.BICUBIC)
    pixels = np.asarray(scene).astype(np.int16)
    noise = rng.integers(-12, 13, size=(height, width, 1), dtype=np.int16)
    pixels += noise + rng.integers(-4, 5, size=(height, width, 3), dtype=np.int16)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(
        path, "JPEG", quality=quality
    )
    return path


# --- fixture sets --------------------------------------------------------------------------


@dataclass(frozen=True)
class PhotoSpec:
    """One entry of :data:`ALL_FORMATS`: how :func:`make_all_formats` writes that file."""

    filename: str
    mode: str = "RGB"
    size: Size = (64, 48)
    seed: int = 0
    orientation: int | None = None
    transparency: bool = False
    #: Seeds of the following frames / pages (animated GIF, multi-page TIFF).
    more_frames: tuple[int, ...] = ()
    #: Pillow format name a decoder reports.
    format: str = "JPEG"
    #: The file is lossy (JPEG, WebP q90, HEIC, AVIF, GIF palette): compare with a tolerance.
    lossy: bool = False
    #: What to skip on: "heif" / "avif" when the codec may be missing.
    needs: str | None = None


#: Every format / mode / orientation vitdex supports, by name.
ALL_FORMATS: dict[str, PhotoSpec] = {
    "jpeg_rgb": PhotoSpec("rgb.jpg", lossy=True),
    "jpeg_grey": PhotoSpec("grey.jpeg", mode="L", lossy=True),
    "jpeg_cmyk": PhotoSpec("cmyk.jpg", mode="CMYK", lossy=True),
    "png_rgb": PhotoSpec("rgb.png", format="PNG"),
    "png_rgba": PhotoSpec("rgba.png", mode="RGBA", format="PNG"),
    "png_p": PhotoSpec("palette.png", mode="P", format="PNG"),
    "png_p_transparent": PhotoSpec("palette_t.png", mode="P", transparency=True, format="PNG"),
    "png_la": PhotoSpec("la.png", mode="LA", format="PNG"),
    "png_l": PhotoSpec("grey.png", mode="L", format="PNG"),
    "png_1": PhotoSpec("bilevel.png", mode="1", format="PNG"),
    "png_i16": PhotoSpec("grey16.png", mode="I;16", format="PNG"),
    "png_rgb16": PhotoSpec("rgb16.png", mode="RGB;16", format="PNG"),
    "webp": PhotoSpec("photo.webp", format="WEBP", lossy=True),
    "webp_rgba": PhotoSpec("alpha.webp", mode="RGBA", format="WEBP", lossy=True),
    "gif_animated": PhotoSpec("anim.gif", more_frames=(1,), format="GIF", lossy=True),
    "tiff": PhotoSpec("photo.tif", format="TIFF"),
    "tiff_cmyk": PhotoSpec("cmyk.tiff", mode="CMYK", format="TIFF"),
    "tiff_i32": PhotoSpec("int32.tiff", mode="I", format="TIFF"),
    "tiff_float": PhotoSpec("float.tiff", mode="F", format="TIFF"),
    "tiff_multipage": PhotoSpec("pages.tiff", more_frames=(1,), format="TIFF"),
    "bmp": PhotoSpec("photo.bmp", format="BMP"),
    "heic": PhotoSpec("photo.heic", format="HEIF", lossy=True, needs="heif"),
    "avif": PhotoSpec("photo.avif", format="AVIF", lossy=True, needs="avif"),
    **{
        f"jpeg_orientation_{o}": PhotoSpec(
            f"orientation_{o}.jpg", size=(96, 64), seed=7, orientation=o, lossy=True
        )
        for o in range(1, 9)
    },
}


def make_all_formats(folder: Path) -> dict[str, Path]:
    """Write every :data:`ALL_FORMATS` entry into ``folder``; return name -> path.

    HEIC / AVIF entries are left out when this machine cannot write them (see
    :func:`heif_writable`, :func:`avif_writable`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for name, spec in ALL_FORMATS.items():
        if spec.needs == "heif" and heif_writable() is not None:
            continue
        if spec.needs == "avif" and avif_writable() is not None:
            continue
        path = folder / spec.filename
        if spec.more_frames:
            make_frames(path, size=spec.size, seeds=(spec.seed, *spec.more_frames))
        else:
            make_photo(
                path,
                size=spec.size,
                seed=spec.seed,
                mode=spec.mode,
                orientation=spec.orientation,
                transparency=spec.transparency,
            )
        out[name] = path
    return out


def make_bomb_png(path: Path, size: Size = (20000, 20000)) -> Path:
    """A valid 1-bit PNG of ``size`` that compresses to a few KB (a decompression bomb).

    Decoded, it is ``width*height`` bytes in Pillow (400 MB at the default size).
    """
    width, height = size
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed all-black pixels
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )
    return path


def make_broken_files(folder: Path) -> dict[str, Path]:
    """Write files no decoder should accept; return name -> path.

    ``empty`` (0 bytes), ``truncated`` (a valid JPEG cut in half), ``text`` (prose named
    .jpg), ``garbage`` (random bytes named .png), ``bomb`` (a 20000x20000 PNG of a few KB).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    whole = make_photo(folder / "whole.jpg", size=(256, 192), seed=3)
    data = whole.read_bytes()
    whole.unlink()
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    text = folder / "text.jpg"
    text.write_text("This is not a photo.\nIt is a text file with a .jpg name.\n")
    garbage = folder / "garbage.png"
    garbage.write_bytes(np.random.default_rng(99).integers(0, 256, 4096, np.uint8).tobytes())
    bomb = make_bomb_png(folder / "bomb.png")
    return {"empty": empty, "truncated": truncated, "text": text, "garbage": garbage, "bomb": bomb}


# Display P3's primaries adapted to the ICC's D50 white (Apple's Display P3 profile).
_P3_COLORANTS = {
    b"rXYZ": (0.5151, 0.2412, -0.0011),
    b"gXYZ": (0.2920, 0.6922, 0.0419),
    b"bXYZ": (0.1571, 0.0666, 0.7841),
}


def display_p3_profile() -> bytes:
    """An ICC profile with Display P3's primaries and sRGB's tone curve (what phones tag
    their photos with), made from LittleCMS's built-in sRGB by rewriting the three
    colorant tags: no profile file is shipped or downloaded."""
    from PIL import ImageCms

    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    (count,) = struct.unpack(">I", icc[128:132])
    for entry in range(count):
        sig, offset, _ = struct.unpack(">4sII", icc[132 + 12 * entry : 144 + 12 * entry])
        if sig in _P3_COLORANTS:  # an XYZ tag: type, reserved, then three s15Fixed16
            values = (round(v * 65536) for v in _P3_COLORANTS[sig])
            icc[offset + 8 : offset + 20] = struct.pack(">3i", *values)
    return bytes(icc)


def srgb_to_profile(rgb: np.ndarray, icc: bytes) -> np.ndarray:
    """sRGB pixels re-expressed in the RGB space of ``icc``: what a camera or phone that
    tags its photos with that profile stores for the same colours."""
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    target = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    transform = ImageCms.buildTransform(srgb, target, "RGB", "RGB")
    return np.asarray(ImageCms.applyTransform(Image.fromarray(rgb), transform))
