"""Walk photo folders: every image file once, surviving symlink loops and dangling links.

Links are followed only where they stay inside the folders photos may be read from
(:func:`vitdex.paths.photo_roots`): a folder link leading out is not entered, and a file
link leading out is listed with the link's own size and time (nothing about its target),
so that reading it fails with its reason and the catalog shows why it was not indexed.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from vitdex.paths import inside

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ScannedFile:
    """A candidate image file and its fingerprint's fast part."""

    path: str  # absolute, as reached (symlinked folders keep their link path)
    size: int
    mtime_ns: int


def scan(
    root: Path,
    extensions: Collection[str],
    *,
    follow_symlinks: bool = True,
    on_file: Callable[[int], None] | None = None,
    within: Sequence[Path] | None = None,
) -> Iterator[ScannedFile]:
    """Yield the image files under ``root`` (recursively), by extension, case-insensitive.

    Symlinked folders are followed once: a folder reached again through a link (a loop,
    or two links to one place) is skipped by its (device, inode). Dangling links and
    unreadable entries are logged and skipped; hidden files and folders are skipped.
    With ``within`` (resolved folders), links are judged as the module docstring says.
    """
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()
    count = 0
    try:
        root_stat = root.stat()
    except OSError as exc:
        log.warning("cannot read %s: %s", root, exc)
        return
    seen_dirs.add((root_stat.st_dev, root_stat.st_ino))
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            log.warning("cannot list %s: %s", folder, exc)
            continue
        subdirs: list[str] = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_link = entry.is_symlink()
                if is_link and not follow_symlinks:
                    continue
                st = entry.stat(follow_symlinks=True)
                outside = (
                    is_link
                    and within is not None
                    and not inside(Path(os.path.realpath(entry.path, strict=True)), within)
                )
                if outside and stat.S_ISDIR(st.st_mode):
                    log.warning("not following %s: a folder link out of the library", entry.path)
                    continue
                if outside:
                    # Listed as the link itself (nothing of the target is recorded): its
                    # read is refused, and the catalog keeps the reason.
                    st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                # A dangling link or a file that vanished between listing and stat.
                log.info("skipping %s: %s", entry.path, exc)
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in seen_dirs:
                    log.info("skipping %s: folder already scanned (symlink loop?)", entry.path)
                    continue
                seen_dirs.add(key)
                subdirs.append(entry.path)
            elif stat.S_ISREG(st.st_mode) or outside:
                if "." + entry.name.rpartition(".")[2].lower() not in extensions:
                    continue
                # The same file reached through a link and directly is indexed once.
                fkey = (st.st_dev, st.st_ino)
                if fkey in seen_files:
                    continue
                seen_files.add(fkey)
                if outside:
                    log.warning("%s links out of the library: it is not indexed", entry.path)
                count += 1
                if on_file is not None:
                    on_file(count)
                yield ScannedFile(entry.path, st.st_size, st.st_mtime_ns)
        # Depth-first in name order, so runs visit files in a stable order.
        stack.extend(reversed(subdirs))
