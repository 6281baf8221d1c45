"""Folders and files of a run that appear whole or not at all, and survive a power cut.

A checkpoint, ``final/`` or ``lora/`` is written to a temporary folder, flushed to disk and
renamed into place (:func:`publish`), so a run killed at any moment leaves either the old
or the new one, never a half-written folder that a resume would trust.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from vitdex.training.convert.files import atomic_path, default_file_mode

__all__ = ["publish", "write_json_atomic"]


def _fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename is durable only once its folder is)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root``, deepest first; files get the mode a
    plain ``open()`` gives (safetensors writes 0600, unreadable to a UI run by another
    user)."""
    mode = default_file_mode()
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
        elif path.is_dir():
            _fsync_dir(path)
    _fsync_dir(root)


def publish(tmp: Path, target: Path) -> None:
    """Make the fully written folder ``tmp`` appear as ``target`` in one rename."""
    _fsync_tree(tmp)
    if target.exists():
        # Replacing is not atomic for folders: move the old one aside first.
        old = target.with_name(f".old-{target.name}-{os.getpid()}")
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(target)
    _fsync_dir(target.parent)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path``, replacing it in one rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    _fsync_dir(path.parent)
