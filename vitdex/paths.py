"""Reading photo files without leaving the folders they may be read from.

A catalog path is only a name: between indexing and reading, a photo can be replaced by
a symlink (to ``/etc/passwd``, say), or a folder on the way by a link elsewhere. So every
read of a photo (indexing, thumbnails, ``/file``, exports, training data) goes through
:func:`open_confined`:

1. the path is resolved (every link followed) and must lie inside one of the folders it
   may be read from (for a catalog photo, :func:`photo_roots`);
2. the resolved path is opened one component at a time, each relative to the folder
   opened before it and with ``O_NOFOLLOW``: a link swapped in after step 1 makes the open
   fail instead of being followed, so the file opened is the file checked;
3. the opened descriptor must be a regular file (not a FIFO, device or folder).

Links that stay inside those folders are fine; links out of them are refused with
:class:`~vitdex.errors.PathRefusedError`.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

from vitdex.errors import PathRefusedError

StrPath = str | os.PathLike[str]

__all__ = [
    "LIBRARY_SCOPE",
    "StrPath",
    "confine",
    "inside",
    "open_confined",
    "photo_roots",
    "read_confined",
]

#: How refusals name the folders a catalog photo may be read from.
LIBRARY_SCOPE = "its library folder and VITDEX_ALLOWED_ROOTS"

# O_PATH (Linux) needs only search permission on a folder, as a plain path walk does.
_DIR_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO must not hang the reader until somebody writes to it.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# What opening a link with O_NOFOLLOW fails with (ENOTDIR with O_DIRECTORY; EMLINK on BSD).
_LINK_ERRNOS = frozenset({errno.ELOOP, errno.ENOTDIR, errno.EMLINK})


def inside(resolved: Path, roots: Iterable[Path]) -> bool:
    """Whether the resolved path ``resolved`` is one of ``roots`` or lies under one."""
    return any(resolved == root or resolved.is_relative_to(root) for root in roots)


def photo_roots(library_root: StrPath, allowed_roots: Iterable[Path]) -> tuple[Path, ...]:
    """The folders a library's photos may resolve into: its root and the allowed roots.

    The root is stored resolved when the library is registered and is not resolved
    again here: a root later swapped for a link must not carry the boundary with it.
    """
    return (Path(library_root), *allowed_roots)


def confine(path: StrPath, within: Sequence[Path], *, scope: str = LIBRARY_SCOPE) -> Path:
    """``path`` fully resolved, if that lies inside one of ``within`` (resolved folders).

    Raises :class:`PathRefusedError` when it lies outside (or loops), and the
    :class:`OSError` of the resolution otherwise (``FileNotFoundError`` when gone).
    """
    try:
        resolved = Path(os.path.realpath(path, strict=True))
    except ValueError:  # a NUL byte
        raise PathRefusedError(f"{path!r} is not a valid path") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PathRefusedError(f"{path}: symlink loop; it is not read") from None
        raise
    if not inside(resolved, within):
        raise PathRefusedError(f"{path} leads outside {scope} (a symlink?); it is not read")
    return resolved


def _open_walk(target: Path) -> int:
    """Open the resolved ``target`` with no link followed anywhere on the way."""
    if os.open not in os.supports_dir_fd:  # no openat (Windows): the final component only
        return os.open(target, _FILE_FLAGS)
    dir_fd = os.open(target.anchor, _DIR_FLAGS)
    try:
        for name in target.parts[1:-1]:
            next_fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
        return os.open(target.name, _FILE_FLAGS, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def open_confined(
    path: StrPath, within: Sequence[Path] | None, *, scope: str = LIBRARY_SCOPE
) -> BinaryIO:
    """``path`` opened for binary reading, if it is a regular file inside ``within``.

    With ``within`` (resolved folders) links are followed as long as they stay inside
    (see the module docstring); with ``None`` nothing is confined, but the final
    component must not be a link. Raises :class:`PathRefusedError` for a file outside,
    a link where none may be, or anything but a regular file, and the :class:`OSError`
    of the open otherwise (``FileNotFoundError`` when gone).
    """
    try:
        if within is None:
            fd = os.open(path, _FILE_FLAGS)
        else:
            fd = _open_walk(confine(path, within, scope=scope))
    except ValueError:  # a NUL byte
        raise PathRefusedError(f"{path!r} is not a valid path") from None
    except OSError as exc:
        if exc.errno in _LINK_ERRNOS:
            raise PathRefusedError(
                f"{path} is or passes through a symlink that may not be followed; it is not read"
            ) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PathRefusedError(f"cannot read file: {path} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_confined(
    path: StrPath, within: Sequence[Path] | None, *, scope: str = LIBRARY_SCOPE
) -> bytes:
    """The bytes of ``path``, read through :func:`open_confined` (same errors)."""
    with open_confined(path, within, scope=scope) as handle:
        return handle.read()
