"""Photo decoding: bytes or a path in, an upright RGB image plus its EXIF facts out.

Three things make decoding safe and fast enough for bulk indexing:

- the pixel count is checked from the header before any pixel is decoded (bomb guard);
- JPEGs are decoded at 1/2, 1/4 or 1/8 scale when the caller only needs a small image
  (libjpeg's DCT scaling, several times faster than a full decode plus resize);
- every failure, whatever Pillow or a codec raises, becomes an :class:`ImageError` with a
  short reason that can be shown next to the file name.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import re
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError, features

from vitdex.errors import ImageError, ImageTooLargeError
from vitdex.indexer.exif import ExifInfo as ExifInfo
from vitdex.indexer.exif import read_exif
from vitdex.paths import open_confined

try:  # Pillow wheels ship LittleCMS; a source build may not have it
    from PIL import ImageCms
except ImportError:  # pragma: no cover - depends on how Pillow was built
    ImageCms = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "DecodedImage",
    "ExifInfo",
    "decode_image",
    "open_photo",
    "read_photo",
    "register_optional_formats",
    "to_rgb",
    "to_srgb",
]


def _pillow_heif_major() -> int | None:
    """pillow-heif's major version if installed (without importing its native library)."""
    if find_spec("pillow_heif") is None:
        return None
    try:
        return int(metadata.version("pillow-heif").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        return 1


_HEIF_MAJOR = _pillow_heif_major()
# Pillow decodes AVIF itself since 11.2; pillow-heif did before 1.0.
_AVIF_AVAILABLE = bool(features.check_module("avif")) or (
    _HEIF_MAJOR is not None and _HEIF_MAJOR < 1
)

#: File suffixes (lower case, with the dot) the scanner picks up.
SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp"}
    | ({".heic", ".heif"} if _HEIF_MAJOR is not None else set())
    | ({".avif"} if _AVIF_AVAILABLE else set())
)

# Only these Pillow plugins may open a file. Pillow would otherwise also try EPS (which
# runs Ghostscript), PSD, ICO and dozens more on whatever bytes an upload contains.
_WANTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP", "AVIF", "HEIF")
# Pillow's JPEG opener names a JPEG with a multi-picture extension (most camera JPEGs) "MPO".
_REPORTED_FORMAT = {"MPO": "JPEG"}

_register_lock = threading.Lock()
_registered: bool | None = None


def register_optional_formats() -> bool:
    """Register pillow-heif's HEIF (and, where it has one, AVIF) opener with Pillow, once.

    Returns whether pillow-heif is available. Safe to call from any thread, any number of
    times; after the first call it only reads a flag.
    """
    global _registered
    if _registered is not None:
        return _registered
    with _register_lock:
        if _registered is None:
            try:
                import pillow_heif

                pillow_heif.register_heif_opener()
                # Older pillow-heif releases also decode AVIF; newer ones leave it to Pillow.
                register_avif = getattr(pillow_heif, "register_avif_opener", None)
                if register_avif is not None and not features.check_module("avif"):
                    register_avif()
                _registered = True
            except Exception:  # not installed, or its native library fails to load
                _registered = False
    return _registered


def _allowed_formats() -> list[str]:
    heif = register_optional_formats()
    Image.init()  # loads every plugin once; a no-op afterwards
    return [f for f in _WANTED_FORMATS if f in Image.OPEN and (heif or f != "HEIF")]


# --- modes ---------------------------------------------------------------------------------


def _over_white(rgba: Image.Image) -> Image.Image:
    """Composite an RGBA image over white: transparent photos must not turn black."""
    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba, (0, 0), rgba)
    return out


def _grey_to_rgb(values: np.ndarray) -> Image.Image:
    return Image.fromarray(values.astype(np.uint8)).convert("RGB")


def _int_to_8bit(values: np.ndarray, bits16: bool) -> np.ndarray:
    if bits16:
        # Top byte of each sample: 65535 -> 255, 32768 -> 128, and v*257 -> v exactly.
        return values.astype(np.uint16) >> 8
    # 32-bit "I" images carry no bit depth: judge it from the values they hold.
    low, high = int(values.min()), int(values.max())
    if low >= 0 and high <= 255:
        return values
    if low >= 0 and high <= 65535:
        return values.astype(np.uint32) >> 8
    span = max(high - low, 1)
    scaled: np.ndarray = np.rint((values.astype(np.float64) - low) * (255.0 / span))
    return scaled


def _float_to_8bit(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if low >= 0.0 and high <= 1.0:  # the usual convention for float images
        values = values * 255.0
    elif low < 0.0 or high > 255.0:
        values = (values - low) * (255.0 / max(high - low, 1e-12))
    scaled: np.ndarray = np.rint(values)
    return scaled


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB the way a viewer would show it.

    Transparency (alpha channel, transparent palette entry, premultiplied alpha) is
    composited over white; 16-bit greyscale is scaled (65535 -> 255, not clipped); 32-bit
    integer and float greyscale are scaled by their value range (0..1 and 0..255 floats,
    0..255 and 0..65535 integers are taken as they are conventionally meant). RGB images are
    returned as they are, not copied. Raises :class:`ImageError` for modes with no RGB
    meaning.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    try:
        if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
            mode == "P" and image.has_transparency_data
        ):
            if mode == "La":  # Pillow has no direct La -> RGBA conversion
                image = image.convert("LA")
            return _over_white(image.convert("RGBA"))
        if mode.startswith("I;16"):
            return _grey_to_rgb(_int_to_8bit(np.asarray(image), bits16=True))
        if mode == "I":
            return _grey_to_rgb(_int_to_8bit(np.asarray(image), bits16=False))
        if mode == "F":
            return _grey_to_rgb(_float_to_8bit(np.asarray(image)))
        # L, 1, P, CMYK (Adobe's inverted CMYK is undone by the JPEG loader), YCbCr, LAB,
        # HSV, RGBX: Pillow converts these correctly.
        return image.convert("RGB")
    except (ValueError, TypeError, KeyError) as exc:
        raise ImageError(f"unsupported image mode {mode}: {exc}") from exc


# --- colour management -----------------------------------------------------------------------

#: Modes whose channels are the red, green and blue an embedded RGB profile describes.
_RGB_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "P", "PA"})
#: Colorants closer than this to sRGB's mean the profile is sRGB: nothing to convert.
_SRGB_TOLERANCE = 2e-3


@functools.cache
def _srgb_profile() -> Any:
    assert ImageCms is not None
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _colorants(profile: Any) -> np.ndarray:
    p = profile.profile
    return np.array([c[0] for c in (p.red_colorant, p.green_colorant, p.blue_colorant)])


@functools.lru_cache(maxsize=32)
def _srgb_transform(icc: bytes) -> Any:
    """A LittleCMS transform from an embedded RGB profile to sRGB, built once per profile.

    None when nothing should change: the profile is sRGB already (same colorants; a
    camera's sRGB tag costs no transform), is not an RGB profile (grey, CMYK: Pillow's
    plain conversion is used), or cannot be read (a broken tag must not lose the photo).
    """
    if ImageCms is None:
        return None
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if source.profile.xcolor_space.strip() != "RGB":
            return None
        if source.profile.red_colorant is not None and np.allclose(
            _colorants(source), _colorants(_srgb_profile()), atol=_SRGB_TOLERANCE
        ):
            return None
        # NOCACHE: LittleCMS's one-pixel cache is not safe across the decode threads.
        return ImageCms.buildTransform(
            source,
            _srgb_profile(),
            "RGB",
            "RGB",
            renderingIntent=ImageCms.Intent.PERCEPTUAL,
            flags=ImageCms.Flags.NOCACHE,
        )
    except (OSError, ValueError, TypeError, ImageCms.PyCMSError) as exc:
        log.debug("ignoring an unreadable colour profile: %s", exc)
        return None


def to_srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """``image`` (mode RGB) converted from its embedded ICC profile ``icc`` to sRGB.

    ViT checkpoints were trained on sRGB pixels; a wide-gamut photo (Display P3 from a
    phone, Adobe RGB from a camera) read as if it were sRGB looks washed out to the
    model, and its crops for training would too. Returned unchanged when there is no
    profile, it is sRGB, or it does not describe RGB pixels.
    """
    if not icc or image.mode != "RGB":
        return image
    transform = _srgb_transform(bytes(icc))
    if transform is None:
        return image
    converted = ImageCms.applyTransform(image, transform)
    return image if converted is None else converted  # None only for in-place transforms


# --- decoding ------------------------------------------------------------------------------


@dataclass
class DecodedImage:
    """A decoded photo: upright RGB pixels, its full size and its EXIF facts."""

    #: Mode RGB, orientation applied; smaller than width x height when decoded reduced.
    image: Image.Image
    #: Full-size width after orientation, whatever size :attr:`image` was decoded at.
    width: int
    height: int
    #: Pillow's format name ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP", "HEIF", "AVIF").
    format: str
    exif: ExifInfo


# Transpose that turns a stored image upright for each EXIF orientation (as
# ImageOps.exif_transpose does).
_UPRIGHT: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = frozenset({5, 6, 7, 8})
_PILLOW_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


def _megapixels(pixels: int) -> str:
    mp = pixels / 1e6
    return f"{mp:.1f}" if mp >= 1 else f"{mp:.3g}"


def _too_large(width: int, height: int, max_megapixels: float) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"file is too large: {width}x{height} = {_megapixels(width * height)} MP"
        f" > VITDEX_MAX_MEGAPIXELS={max_megapixels:g}"
    )


def _pillow_bomb(exc: Exception, max_megapixels: float) -> ImageTooLargeError:
    """Pillow's own guard fired before the size was known (limit: Image.MAX_IMAGE_PIXELS)."""
    match = _PILLOW_BOMB_PIXELS.search(str(exc))
    size = f"{_megapixels(int(match.group(1)))} MP" if match else "more pixels than allowed"
    if match and int(match.group(1)) <= max_megapixels * 1e6:
        return ImageTooLargeError(
            f"file is too large: {size} exceeds Pillow's decompression-bomb limit"
            f" (raise PIL.Image.MAX_IMAGE_PIXELS to use VITDEX_MAX_MEGAPIXELS={max_megapixels:g})"
        )
    return ImageTooLargeError(
        f"file is too large: {size} > VITDEX_MAX_MEGAPIXELS={max_megapixels:g}"
    )


def _draft_request(orientation: int | None, need: tuple[int, int]) -> tuple[int, int]:
    """The stored-orientation size the JPEG decoder must still deliver."""
    if orientation in _SWAPS_AXES:
        return need[1], need[0]
    return need


def _reduce(image: Image.Image, need: tuple[int, int]) -> Image.Image:
    """Box-reduce by an integer factor when the image is at least 4x the size needed.

    Box averaging over whole blocks is antialiased, and far cheaper than a resampling
    filter on the full image; the result stays at least ``need`` in both dimensions.
    """
    factor = min(image.width // max(need[0], 1), image.height // max(need[1], 1))
    if factor < 4:
        return image
    return image.reduce(factor)


def _not_image_reason(head: bytes) -> str:
    # ISO-BMFF "ftyp" boxes name HEIC/AVIF: say what is missing rather than "not an image".
    if head[4:8] == b"ftyp" and not register_optional_formats():
        brand = head[8:12].decode("ascii", "replace")
        if brand.startswith(("hei", "hev", "mif", "msf")):
            return "HEIF/HEIC needs pillow-heif (pip install 'vitdex[heif]')"
    return "not an image (unrecognised format)"


def _allow_pillow(max_megapixels: float) -> None:
    """Let Pillow's global bomb guard admit what VITDEX_MAX_MEGAPIXELS admits.

    Our header check is the real guard; Pillow's (warning past ~89 MP, refusing past
    ~179 MP) would otherwise veto a higher limit the user set on purpose. It is only
    ever raised, never lowered, so other code in the process keeps at least its guard.
    """
    current = Image.MAX_IMAGE_PIXELS
    wanted = int(max_megapixels * 1e6)
    if current is not None and wanted > current:
        Image.MAX_IMAGE_PIXELS = wanted


#: ``catch_warnings`` swaps the process's filters: decode threads interleaving it could
#: leave the "ignore" filter installed for good.
_WARNINGS_LOCK = threading.Lock()


def _open_image(stream: IO[bytes]) -> Image.Image:
    """``Image.open`` without Pillow's DecompressionBombWarning: Pillow warns past
    ``MAX_IMAGE_PIXELS`` (kept >= VITDEX_MAX_MEGAPIXELS by :func:`_allow_pillow`), so the
    header check refuses that file with vitdex's own reason; the warning was noise beside
    it in ``vitdex index`` and worker output. Pillow elsewhere still warns."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(stream, formats=_allowed_formats())


def _decode_stream(
    stream: IO[bytes], max_megapixels: float, min_size: tuple[int, int] | None
) -> DecodedImage:
    _allow_pillow(max_megapixels)
    try:
        opened = _open_image(stream)
    except Image.DecompressionBombError as exc:
        raise _pillow_bomb(exc, max_megapixels) from exc
    except UnidentifiedImageError as exc:
        stream.seek(0)
        raise ImageError(_not_image_reason(stream.read(16))) from exc

    # 2x headroom over what the caller needs keeps its final downscale antialiased.
    need = None if min_size is None else (max(1, 2 * min_size[0]), max(1, 2 * min_size[1]))
    with opened as img:
        # Header only so far: refuse before a single pixel is allocated.
        stored_w, stored_h = img.size
        if stored_w * stored_h > max_megapixels * 1e6:
            raise _too_large(stored_w, stored_h, max_megapixels)
        if stored_w < 1 or stored_h < 1:
            raise ImageError(f"truncated or corrupt image data: size {stored_w}x{stored_h}")
        fmt = _REPORTED_FORMAT.get(img.format or "", img.format or "unknown")

        if fmt == "JPEG":
            # JPEG keeps EXIF in a header segment, so orientation is known before decoding,
            # which the draft request needs (a 90° photo is stored sideways).
            exif = read_exif(img)
            if need is not None:
                img.draft("RGB", _draft_request(exif.orientation, need))
            img.load()
        else:
            # PNG may keep eXIf after the pixel data, so it is only reliably there after load.
            img.load()
            exif = read_exif(img)

        # Only modes whose values are RGB can mean what an RGB profile says (a grey or
        # CMYK photo with an RGB profile is mis-tagged; Pillow's conversion stands).
        icc = img.info.get("icc_profile") if img.mode in _RGB_MODES else None
        result: Image.Image = img
        method = _UPRIGHT.get(exif.orientation or 1)
        if method is not None:
            result = result.transpose(method)
        result = to_rgb(result)
        if need is not None:
            result = _reduce(result, need)
        # After the reduction: the transform then touches the fewest pixels.
        result = to_srgb(result, icc)
        if result is img and (fmt != "JPEG" or getattr(img, "n_frames", 1) != 1):
            # Multi-frame capable loaders (PNG, TIFF, GIF, WebP, MPO) keep the stream for
            # seeking; a copy lets it go. A plain JPEG drops it after load(), which spares
            # the hot path a full-size copy (~20 ms at 12 MP).
            result = img.copy()

    width, height = (
        (stored_h, stored_w) if exif.orientation in _SWAPS_AXES else (stored_w, stored_h)
    )
    return DecodedImage(image=result, width=width, height=height, format=fmt, exif=exif)


def open_photo(path: str | os.PathLike[str], within: Sequence[Path] | None) -> BinaryIO:
    """``path`` opened through :func:`vitdex.paths.open_confined`, every failure an
    :class:`ImageError` with its reason (the photo is recorded failed, not the run)."""
    try:
        return open_confined(path, within)
    except FileNotFoundError as exc:
        raise ImageError("file not found") from exc
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror or exc}") from exc


def read_photo(path: str | os.PathLike[str], within: Sequence[Path] | None) -> bytes:
    """The bytes of a photo, read as :func:`open_photo` opens it (same errors)."""
    with open_photo(path, within) as handle:
        try:
            return handle.read()
        except OSError as exc:
            raise ImageError(f"cannot read file: {exc.strerror or exc}") from exc


def decode_image(
    source: Path | bytes,
    *,
    max_megapixels: float = 100.0,
    min_size: tuple[int, int] | None = None,
    within: Sequence[Path] | None = None,
) -> DecodedImage:
    """Decode a photo from a path or from its bytes into an upright RGB image.

    A path is opened through :func:`vitdex.paths.open_confined`: with ``within``
    (resolved folders) it must resolve inside one of them, links included; without, its
    final component must not be a link. Either way only a regular file is read, and a
    refusal is a :class:`~vitdex.errors.PathRefusedError` (an :class:`ImageError`).

    ``max_megapixels`` is checked against the size in the file header before any pixel is
    decoded (:class:`ImageTooLargeError` when exceeded). Pillow's own, process-wide guard
    (``PIL.Image.MAX_IMAGE_PIXELS``) is raised to that limit when it is lower, so a limit
    above Pillow's default works.

    With ``min_size=(w, h)`` the image may come back reduced, but never below ``(2w, 2h)``
    (the headroom keeps a later resize antialiased): JPEGs via libjpeg's 1/2, 1/4, 1/8 DCT
    scaling, other formats by a box reduction when at least 4x too large. ``width`` and
    ``height`` always report the full, upright size. The first frame / page is used for
    animations and multi-page files.

    Every failure raises :class:`ImageError` with a short reason (empty file, not an image,
    truncated or corrupt data, unsupported mode, file not found, a refused path).
    """
    try:
        if isinstance(source, bytes | bytearray | memoryview):
            if len(source) == 0:
                raise ImageError("empty file")
            return _decode_stream(io.BytesIO(source), max_megapixels, min_size)
        with open_photo(source, within) as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                raise ImageError("empty file")
            return _decode_stream(handle, max_megapixels, min_size)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _pillow_bomb(exc, max_megapixels) from exc
    except MemoryError as exc:
        raise ImageError("not enough memory to decode this image") from exc
    except Exception as exc:
        # OSError ("image file is truncated", "broken data stream"), SyntaxError (broken
        # PNG chunks), ValueError, struct.error, EOFError, codec errors...
        reason = str(exc) or type(exc).__name__
        raise ImageError(f"truncated or corrupt image data: {reason}") from exc
