"""JPEG thumbnails of catalog images, generated once and cached on disk.

A thumbnail lives at ``VITDEX_HOME/thumbnails/<size>/<id>-<sha>.jpg``. The content hash in
the name means a changed photo (re-indexed with a new sha256) gets a new thumbnail instead
of the stale one; older thumbnails of the same id are removed when a new one is written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from vitdex.errors import ConfigError, ForbiddenError, NotFoundError
from vitdex.paths import confine

MIN_SIZE = 64
MAX_SIZE = 1024
#: JPEG quality of thumbnails: small files, no visible blocking at these sizes.
QUALITY = 85


def thumbnail_path(home: Path, size: int, image_id: int, sha256: str | None) -> Path:
    """Where the thumbnail of one image version at one size is cached."""
    key = (sha256 or "nosha")[:16]
    return home / "thumbnails" / str(size) / f"{image_id}-{key}.jpg"


def ensure_thumbnail(
    home: Path,
    image_id: int,
    source: Path,
    sha256: str | None,
    size: int,
    *,
    within: Sequence[Path],
    max_megapixels: float = 100.0,
) -> Path:
    """The cached thumbnail (longest side ``size``) of ``source``, made when missing.

    ``source`` must resolve inside ``within`` (see :mod:`vitdex.paths`). Raises
    :class:`ConfigError` for a size outside 64..1024, :class:`NotFoundError` when the
    photo is gone, :class:`~vitdex.errors.PathRefusedError` (403) when it now leads
    outside ``within``, and the decoder's :class:`~vitdex.errors.ImageError` otherwise.
    """
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"thumbnail size must be between {MIN_SIZE} and {MAX_SIZE}, got {size}")
    target = thumbnail_path(home, size, image_id, sha256)
    # Checked before the cache too: a photo replaced by a link out of its library stops
    # showing at once. A photo that is merely gone keeps its cached thumbnail.
    try:
        confine(source, within)
        gone = False
    except (FileNotFoundError, NotADirectoryError):
        gone = True
    except OSError as exc:
        raise ForbiddenError(f"cannot read the file of image {image_id}: {exc.strerror}") from None
    if target.is_file():
        return target
    if gone:
        raise NotFoundError(f"the file of image {image_id} is gone: {source}")

    # Imported here: the decoder's package pulls in the model code, which only the
    # first thumbnail (not every API request) should pay for.
    from vitdex.indexer.images import decode_image

    # The decoder checks again as it opens: the file it reads is the file checked.
    decoded = decode_image(
        source, max_megapixels=max_megapixels, min_size=(size, size), within=within
    )
    picture = decoded.image
    picture.thumbnail((size, size))
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename: a concurrent reader never sees half a JPEG.
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            picture.save(handle, "JPEG", quality=QUALITY)
        Path(tmp).replace(target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for old in target.parent.glob(f"{image_id}-*.jpg"):
        if old != target:
            old.unlink(missing_ok=True)
    return target
