"""EXIF facts of a photo: capture time, camera, orientation and GPS position.

Cameras and editors write EXIF in many odd ways; every field that cannot be read comes
back as ``None``, never as an error, so a broken EXIF block never costs a photo.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from PIL import ExifTags, Image

__all__ = ["ExifInfo", "read_exif"]


@dataclass(frozen=True)
class ExifInfo:
    """The EXIF facts vitdex keeps about a photo; any field the file lacks is ``None``."""

    #: DateTimeOriginal (else DateTimeDigitized, else DateTime): naive camera-local time.
    taken_at: datetime | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    #: Raw EXIF orientation 1..8, already applied to :attr:`DecodedImage.image`. Decoders
    #: that turn the image upright themselves (Pillow's TIFF, pillow-heif) leave 1 or None.
    orientation: int | None = None
    #: Decimal degrees, negative south of the equator.
    gps_lat: float | None = None
    #: Decimal degrees, negative west of Greenwich.
    gps_lon: float | None = None


_EMPTY_EXIF = ExifInfo()
_DATE = re.compile(r"^\s*(\d{4})[:\-/.](\d{1,2})[:\-/.](\d{1,2})[ T]+(\d{1,2}):(\d{2}):(\d{2})")


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", " ").strip()
    return value or None


def _parse_datetime(value: Any) -> datetime | None:
    text = _text(value)
    if text is None:
        return None
    match = _DATE.match(text)
    if match is None:
        return None
    try:
        # "0000:00:00 00:00:00" and similar placeholders fail here and count as missing.
        year, month, day, hour, minute, second = (int(part) for part in match.groups())
        return datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None


def _coordinate(value: Any, ref: Any, negative_ref: str, limit: float) -> float | None:
    """Degrees/minutes/seconds rationals (or a single number) to signed decimal degrees."""
    parts = value if isinstance(value, tuple | list) else (value,)
    if not 1 <= len(parts) <= 3:
        return None
    try:
        degrees = sum(float(p) / 60**i for i, p in enumerate(parts))
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    # IFDRational with a zero denominator reads as nan: a camera without a GPS fix.
    if not math.isfinite(degrees) or abs(degrees) > limit:
        return None
    ref_text = (_text(ref) or "").upper()
    return -abs(degrees) if ref_text.startswith(negative_ref) else float(degrees)


def _orientation(value: Any) -> int | None:
    if isinstance(value, tuple | list) and value:
        value = value[0]
    if isinstance(value, int) and 1 <= value <= 8:
        return value
    return None


def read_exif(img: Image.Image) -> ExifInfo:
    """Parse the EXIF block; a broken or odd one gives missing fields, never an error."""
    try:
        exif = img.getexif()
    except Exception:
        return _EMPTY_EXIF
    if not exif:
        return _EMPTY_EXIF
    fields: dict[str, Any] = {}
    try:
        sub: Any = exif.get_ifd(ExifTags.IFD.Exif)
    except Exception:
        sub = {}
    try:
        for tag in (
            ExifTags.Base.DateTimeOriginal,
            ExifTags.Base.DateTimeDigitized,
            ExifTags.Base.DateTime,
        ):
            # Some writers put the capture date in IFD0 rather than the Exif sub-IFD.
            taken = _parse_datetime(sub.get(tag)) or _parse_datetime(exif.get(tag))
            if taken is not None:
                fields["taken_at"] = taken
                break
    except Exception:
        pass
    try:
        fields["camera_make"] = _text(exif.get(ExifTags.Base.Make))
        fields["camera_model"] = _text(exif.get(ExifTags.Base.Model))
        fields["orientation"] = _orientation(exif.get(ExifTags.Base.Orientation))
    except Exception:
        pass
    try:
        gps: Any = exif.get_ifd(ExifTags.IFD.GPSInfo)
        lat = _coordinate(
            gps.get(ExifTags.GPS.GPSLatitude), gps.get(ExifTags.GPS.GPSLatitudeRef), "S", 90
        )
        lon = _coordinate(
            gps.get(ExifTags.GPS.GPSLongitude), gps.get(ExifTags.GPS.GPSLongitudeRef), "W", 180
        )
        # Half a position is no position.
        if lat is not None and lon is not None:
            fields["gps_lat"], fields["gps_lon"] = lat, lon
    except Exception:
        pass
    return ExifInfo(**fields)
