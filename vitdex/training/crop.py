"""Crops centred on the subject, resized for training, with caption sidecars.

Square by default; with aspect-ratio buckets (:mod:`vitdex.training.buckets`) the crop is
the largest box of the photo's bucket aspect instead, placed around the same subject.

Where the subject is, in order of trust:

1. **faces**: a frontal face detector. OpenCV's Haar cascade
   (``cv2.data.haarcascades``) where the installed OpenCV has ``CascadeClassifier``
   (4.x; OpenCV 5 moved the cascade classifier out of its main modules), else
   scikit-image's LBP frontal face cascade, which its wheel ships. The crop is a square
   around all faces of a similar size (the largest face and those at least half as big),
   expanded to take in head and shoulders, never smaller than the output resolution
   allows without upscaling;
2. **saliency**: the spectral residual saliency map (Hou & Zhang, CVPR 2007) computed
   with numpy on a 64-pixel thumbnail; the largest square is centred on its centroid;
3. **centre**: the largest centred square, when the picture is flat or nothing stands out.

Photos are turned upright (EXIF orientation) before anything else, by the indexer's
decoder, and every crop box is given in the upright, full-size pixels of the original.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from vitdex.errors import ConfigError
from vitdex.indexer.images import decode_image
from vitdex.training.buckets import Bucket, assign_bucket

__all__ = [
    "FACE_EXPAND",
    "Crop",
    "FaceDetector",
    "bucket_crop",
    "caption_path",
    "check_resolution",
    "face_detector",
    "find_subject",
    "prepare_image",
    "saliency_map",
    "square_crop",
    "write_caption",
]

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]  # left, top, right, bottom (right/bottom exclusive)
Method = Literal["face", "saliency", "centre"]

#: Side of a face crop as a multiple of the faces' extent: head, hair and shoulders.
FACE_EXPAND = 2.5
#: Faces are looked for on a copy whose long side is at most this many pixels.
_DETECT_SIDE = 512
#: A face smaller than this fraction of the picture's short side is not the subject.
_MIN_FACE = 0.08
#: Side of the thumbnail the saliency map is computed on (the method's usual scale).
_SALIENCY_SIDE = 64
#: Below this standard deviation (0..1 grey levels) a picture is flat: nothing to find.
_FLAT = 2.0 / 255.0
#: Smallest and largest output resolution accepted (SDXL trains at 1024).
MIN_RESOLUTION, MAX_RESOLUTION = 32, 2048


@dataclass(frozen=True)
class Crop:
    """Where a square (or a bucket's box) was cut from a picture, and how it was found."""

    #: The box, [left, top, right, bottom) in upright full-size pixels of the original;
    #: square unless :attr:`bucket` is set.
    box: Box
    method: Method
    #: Faces that placed the box (same coordinates), empty unless ``method`` is ``face``.
    faces: tuple[Box, ...] = field(default=())
    #: Full-size upright width and height of the original.
    size: tuple[int, int] = (0, 0)
    #: The aspect-ratio bucket (width, height) the box was cut for; None for a square.
    bucket: Bucket | None = None

    @property
    def side(self) -> int:
        """Width of the box in original pixels (the side of a square)."""
        return self.box[2] - self.box[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (what a dataset item stores as its ``crop``)."""
        out: dict[str, Any] = {
            "box": list(self.box),
            "method": self.method,
            "faces": [list(face) for face in self.faces],
            "width": self.size[0],
            "height": self.size[1],
        }
        if self.bucket is not None:
            out["bucket"] = list(self.bucket)
        return out


# --------------------------------------------------------------------------- faces


#: Finds faces in a uint8 greyscale array; returns (left, top, right, bottom) boxes.
FaceDetector = Callable[[npt.NDArray[np.uint8]], list[Box]]


def _opencv_haar() -> FaceDetector | None:
    try:
        import cv2
    except ImportError:
        return None
    classifier_type = getattr(cv2, "CascadeClassifier", None)
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if classifier_type is None or folder is None:
        return None
    path = Path(folder) / "haarcascade_frontalface_default.xml"
    if not path.is_file():
        return None
    classifier = classifier_type(str(path))
    if classifier.empty():
        return None

    def detect(grey: npt.NDArray[np.uint8]) -> list[Box]:
        side = max(24, int(min(grey.shape) * _MIN_FACE))
        found = classifier.detectMultiScale(
            grey, scaleFactor=1.1, minNeighbors=5, minSize=(side, side)
        )
        return [(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h in found]

    return detect


def _skimage_lbp() -> FaceDetector | None:
    try:
        from skimage.data import lbp_frontal_face_cascade_filename
        from skimage.feature import Cascade
    except ImportError:
        return None
    try:
        cascade = Cascade(lbp_frontal_face_cascade_filename())
    except Exception:  # a broken install: no faces rather than no crops
        return None

    def detect(grey: npt.NDArray[np.uint8]) -> list[Box]:
        side = max(24, int(min(grey.shape) * _MIN_FACE))
        found = cascade.detect_multi_scale(
            img=grey.astype(np.float64) / 255.0,
            scale_factor=1.2,
            step_ratio=1,
            min_size=(side, side),
            max_size=grey.shape,
            # Fewer neighbours let textured objects (a coffee cup's rim) pass as faces.
            min_neighbor_number=6,
        )
        return [
            (int(f["c"]), int(f["r"]), int(f["c"] + f["width"]), int(f["r"] + f["height"]))
            for f in found
        ]

    return detect


@functools.cache
def face_detector() -> tuple[str, FaceDetector] | None:
    """The best installed frontal face detector as ``(name, detect)``, or ``None``.

    Built once per process (loading a cascade parses its XML).
    """
    for name, make in (("opencv-haar", _opencv_haar), ("skimage-lbp", _skimage_lbp)):
        detect = make()
        if detect is not None:
            return name, detect
    log.info("no face detector available (opencv with Haar cascades, or scikit-image)")
    return None


def _grey(image: Image.Image) -> npt.NDArray[np.uint8]:
    return np.asarray(image.convert("L"), dtype=np.uint8)


def _find_faces(image: Image.Image, detector: FaceDetector) -> list[Box]:
    """Faces in ``image`` pixels, the subject's only: the largest and those half as big."""
    scale = min(1.0, _DETECT_SIDE / max(image.size))
    small = image
    if scale < 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        small = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    faces = detector(_grey(small))
    if not faces:
        return []
    largest = max(r - left for left, _t, r, _b in faces)
    # Strangers in the background are smaller; they must not pull the crop off the subject.
    kept = [f for f in faces if (f[2] - f[0]) >= largest / 2]
    return [
        (
            round(left / scale),
            round(top / scale),
            round(right / scale),
            round(bottom / scale),
        )
        for left, top, right, bottom in kept
    ]


# --------------------------------------------------------------------------- saliency


def _blur(values: npt.NDArray[np.float64], sigma: float) -> npt.NDArray[np.float64]:
    """Separable Gaussian blur with reflected edges."""
    radius = max(1, int(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = values
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect")
        out = np.apply_along_axis(lambda row: np.convolve(row, taps, mode="valid"), axis, padded)
    return out


def saliency_map(image: Image.Image) -> npt.NDArray[np.float64]:
    """Spectral residual saliency of ``image`` on a thumbnail (long side 64), in 0..1.

    The log amplitude spectrum minus its local average is what is unexpected in the
    picture; transformed back with the original phase it lights up what stands out.
    A flat picture gives all zeros.
    """
    scale = _SALIENCY_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    grey = (
        np.asarray(image.convert("L").resize(size, Image.Resampling.BOX), dtype=np.float64) / 255.0
    )
    if grey.std() < _FLAT or min(grey.shape) < 3:
        return np.zeros_like(grey)
    spectrum = np.fft.fft2(grey)
    log_amplitude = np.log(np.abs(spectrum) + 1e-9)
    phase = np.angle(spectrum)
    # 3x3 mean of the log spectrum; the spectrum is periodic, so wrap at the edges.
    padded = np.pad(log_amplitude, 1, mode="wrap")
    average = (
        sum(
            padded[dy : dy + log_amplitude.shape[0], dx : dx + log_amplitude.shape[1]]
            for dy in range(3)
            for dx in range(3)
        )
        / 9.0
    )
    residual = log_amplitude - average
    saliency = np.abs(np.fft.ifft2(np.exp(residual + 1j * phase))) ** 2
    saliency = _blur(saliency, sigma=2.5)
    top = float(saliency.max())
    if top <= 0.0 or not np.isfinite(top):
        return np.zeros_like(grey)
    return np.asarray(saliency / top, dtype=np.float64)


def _saliency_centre(image: Image.Image) -> tuple[float, float] | None:
    """Centroid of what stands out (``image`` pixels), or ``None`` when nothing does."""
    saliency = saliency_map(image)
    # Only what rises above the average counts; a diffuse texture adds nothing.
    weights = np.clip(saliency - saliency.mean(), 0.0, None)
    total = float(weights.sum())
    if total <= 1e-9:
        return None
    rows, cols = np.indices(weights.shape)
    cy = float((weights * (rows + 0.5)).sum() / total)
    cx = float((weights * (cols + 0.5)).sum() / total)
    return cx * image.width / weights.shape[1], cy * image.height / weights.shape[0]


# --------------------------------------------------------------------------- placing the box


def _union(boxes: Sequence[Box]) -> Box:
    """The smallest box around ``boxes``."""
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def _place(centre: tuple[float, float], side: int, width: int, height: int) -> Box:
    """A ``side`` square centred as near ``centre`` as the picture allows."""
    side = max(1, min(side, width, height))
    left = round(centre[0] - side / 2)
    top = round(centre[1] - side / 2)
    left = min(max(left, 0), width - side)
    top = min(max(top, 0), height - side)
    return left, top, left + side, top + side


def _subject_faces(image: Image.Image, detector: FaceDetector | None) -> list[Box]:
    """The subject's faces with ``detector``, else the best installed one (or none)."""
    if detector is None:
        found = face_detector()
        detector = found[1] if found else None
    return _find_faces(image, detector) if detector is not None else []


def _place_box(centre: tuple[float, float], size: tuple[int, int], width: int, height: int) -> Box:
    """A box of ``size`` centred as near ``centre`` as the picture allows."""
    w = max(1, min(size[0], width))
    h = max(1, min(size[1], height))
    left = min(max(round(centre[0] - w / 2), 0), width - w)
    top = min(max(round(centre[1] - h / 2), 0), height - h)
    return left, top, left + w, top + h


def bucket_crop(
    image: Image.Image,
    bucket: Bucket,
    *,
    detect_faces: bool = True,
    detector: FaceDetector | None = None,
) -> tuple[Image.Image, Crop]:
    """Cut the largest box of ``bucket``'s aspect out of an upright RGB ``image``, placed
    around the subject, and resize it to the bucket; returns it and the box.

    The subject is found as for squares (faces, else saliency, else the centre). The box
    is as large as the picture allows, so a bucket crop never zooms in: centring it on
    the faces keeps their head-and-shoulders extent inside wherever the box is that big.
    """
    width, height = image.size
    scale = min(width / bucket[0], height / bucket[1])
    size = (
        min(width, max(1, round(bucket[0] * scale))),
        min(height, max(1, round(bucket[1] * scale))),
    )
    faces = _subject_faces(image, detector) if detect_faces else []
    method: Method = "centre"
    centre = (width / 2, height / 2)
    if faces:
        left, top, right, bottom = _union(faces)
        method, centre = "face", ((left + right) / 2, (top + bottom) / 2)
    elif size != (width, height):
        salient = _saliency_centre(image)
        if salient is not None:
            method, centre = "saliency", salient
    box = _place_box(centre, size, width, height)
    out = image.crop(box)
    if out.size != bucket:
        out = out.resize(bucket, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return out.convert("RGB"), Crop(box, method, tuple(faces), (width, height), bucket)


def find_subject(
    image: Image.Image,
    *,
    resolution: int | None = None,
    detect_faces: bool = True,
    detector: FaceDetector | None = None,
) -> Crop:
    """Where to cut the square from ``image`` (box in ``image`` pixels).

    ``resolution`` is the output side: a face crop is never cut smaller than that (when
    the picture is large enough), so zooming on a face does not mean upscaling.
    ``detector`` overrides :func:`face_detector`.
    """
    width, height = image.size
    short = min(width, height)
    if detect_faces:
        faces = _subject_faces(image, detector)
        if faces:
            left, top, right, bottom = _union(faces)
            extent = max(right - left, bottom - top)
            floor = min(short, resolution or 0)
            side = min(short, max(floor, round(extent * FACE_EXPAND)))
            box = _place(((left + right) / 2, (top + bottom) / 2), side, width, height)
            return Crop(box, "face", tuple(faces), (width, height))
    if width != height:
        salient = _saliency_centre(image)
        if salient is not None:
            return Crop(_place(salient, short, width, height), "saliency", (), (width, height))
    return Crop(
        _place((width / 2, height / 2), short, width, height), "centre", (), (width, height)
    )


def square_crop(
    image: Image.Image,
    resolution: int,
    *,
    detect_faces: bool = True,
    detector: FaceDetector | None = None,
) -> tuple[Image.Image, Crop]:
    """Cut the subject's square out of an upright RGB ``image`` and resize it to
    ``resolution``; returns the square and where it came from (in ``image`` pixels)."""
    check_resolution(resolution)
    crop = find_subject(image, resolution=resolution, detect_faces=detect_faces, detector=detector)
    square = image.crop(crop.box)
    if square.size != (resolution, resolution):
        square = square.resize((resolution, resolution), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return square.convert("RGB"), crop


def check_resolution(resolution: int) -> None:
    """Raise :class:`ConfigError` unless ``resolution`` is a usable output side."""
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ConfigError(
            f"resolution must lie between {MIN_RESOLUTION} and {MAX_RESOLUTION}, not {resolution}"
        )


def _to_full(box: Box, sx: float, sy: float, width: int, height: int) -> Box:
    """A square in decoded pixels as a square in full-size pixels."""
    side = min(round((box[2] - box[0]) * sx), width, height)
    left = min(max(round(box[0] * sx), 0), width - side)
    top = min(max(round(box[1] * sy), 0), height - side)
    return left, top, left + side, top + side


def _box_to_full(box: Box, sx: float, sy: float, width: int, height: int) -> Box:
    """A bucket box in decoded pixels as a box in full-size pixels (kept inside)."""
    w = min(round((box[2] - box[0]) * sx), width)
    h = min(round((box[3] - box[1]) * sy), height)
    left = min(max(round(box[0] * sx), 0), width - w)
    top = min(max(round(box[1] * sy), 0), height - h)
    return left, top, left + w, top + h


def _scale_box(box: Box, sx: float, sy: float) -> Box:
    return round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy)


def prepare_image(
    source: Path | bytes,
    resolution: int,
    *,
    max_megapixels: float = 100.0,
    detect_faces: bool = True,
    detector: FaceDetector | None = None,
    buckets: bool = False,
    max_upscale: float = 2.0,
) -> tuple[Image.Image, Crop]:
    """Decode a photo upright, cut the subject's square, resize it to ``resolution``.

    With ``buckets`` the cut has the aspect of the photo's bucket
    (:func:`vitdex.training.buckets.assign_bucket`, chosen from the full-size upright
    photo, scaled up at most ``max_upscale``) instead of a square, and the image comes
    back at that bucket's size; the crop's ``bucket`` records it.

    Large JPEGs are decoded reduced (never below twice ``resolution``), so a 12 MP photo
    costs tens of milliseconds. The returned :class:`Crop` is in the original's upright
    full-size pixels. Raises :class:`~vitdex.errors.ImageError` for unreadable files.
    """
    check_resolution(resolution)
    decoded = decode_image(source, max_megapixels=max_megapixels, min_size=(resolution, resolution))
    sx = decoded.width / decoded.image.width
    sy = decoded.height / decoded.image.height
    if buckets:
        # The bucket from the full-size upright photo: a reduced decode must not change it.
        bucket = assign_bucket(decoded.width, decoded.height, resolution, max_upscale=max_upscale)
        cut, found = bucket_crop(
            decoded.image, bucket, detect_faces=detect_faces, detector=detector
        )
        return cut, Crop(
            _box_to_full(found.box, sx, sy, decoded.width, decoded.height),
            found.method,
            tuple(_scale_box(face, sx, sy) for face in found.faces),
            (decoded.width, decoded.height),
            bucket,
        )
    square, crop = square_crop(
        decoded.image, resolution, detect_faces=detect_faces, detector=detector
    )
    full = Crop(
        _to_full(crop.box, sx, sy, decoded.width, decoded.height),
        crop.method,
        tuple(_scale_box(face, sx, sy) for face in crop.faces),
        (decoded.width, decoded.height),
    )
    return square, full


# --------------------------------------------------------------------------- captions


def caption_path(image_path: Path, extension: str = ".txt") -> Path:
    """The caption sidecar of an image: same name, ``extension`` instead of its suffix."""
    return image_path.with_suffix(extension)


def write_caption(image_path: Path, caption: str, extension: str = ".txt") -> Path:
    """Write ``caption`` (one line, UTF-8) beside ``image_path``; returns the sidecar."""
    text = " ".join(caption.split())  # trainers read the first line only
    path = caption_path(image_path, extension)
    path.write_text(text + "\n", encoding="utf-8")
    return path
