"""The vitdex error tree.

Every error a user can cause or meet derives from :class:`VitdexError`, carries a message
written for that user, and maps to one CLI exit code and one HTTP status (the API maps them
in exactly one place).
"""

from __future__ import annotations


class VitdexError(Exception):
    """Base of every error vitdex raises on purpose."""

    #: HTTP status the API answers with.
    http_status: int = 500
    #: Process exit code the CLI ends with.
    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(VitdexError):
    """A setting or argument is invalid."""

    http_status = 400
    exit_code = 2


class NotFoundError(VitdexError):
    """An image, space, job or path that was asked for does not exist."""

    http_status = 404
    exit_code = 2


class ForbiddenError(VitdexError):
    """The request reaches outside what this server may touch (e.g. VITDEX_ALLOWED_ROOTS)."""

    http_status = 403
    exit_code = 2


class ConflictError(VitdexError):
    """The request clashes with work in progress."""

    http_status = 409
    exit_code = 2


class ModelLoadError(VitdexError):
    """The ViT checkpoint could not be loaded (offline, wrong id, broken files)."""

    http_status = 503
    exit_code = 3


class QueueUnavailableError(VitdexError):
    """The job queue (Redis) cannot be reached: the job row stays queued, and the next
    recovery sweep, or the same request repeated, submits it."""

    http_status = 503
    exit_code = 3


class NoClassifierError(VitdexError):
    """The checkpoint has no classification head, so it cannot classify."""

    http_status = 400
    exit_code = 2


class ImageError(VitdexError):
    """A file could not be used as an image (broken, empty, truncated, unsupported)."""

    http_status = 422
    exit_code = 2


class ImageTooLargeError(ImageError):
    """The image has more pixels than VITDEX_MAX_MEGAPIXELS allows (decompression bomb guard)."""


class PathRefusedError(ForbiddenError, ImageError):
    """A photo path leads outside the folders it may be read from (a symlink out, say),
    or is no regular file. Forbidden over HTTP (403); where photos are read in bulk
    (indexing, exports, training) it is an unreadable image, failed with this reason."""


class SpaceMismatchError(VitdexError):
    """A query or write targets a space built by another model or preprocessing."""

    http_status = 409
    exit_code = 2


class StoreError(VitdexError):
    """The vector store is unreadable or disagrees with the catalog beyond repair."""

    http_status = 500
    exit_code = 4


class CatalogStorageError(VitdexError):
    """The SQL catalog's storage failed: disk full, an I/O error, a read-only file or
    database. Nothing the request did is wrong; the operator must make room or fix the
    disk, so the API answers 503 and the CLI exits like a vector store failure (4)."""

    http_status = 503
    exit_code = 4
