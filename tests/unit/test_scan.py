"""Folder scanning: extensions, hidden entries, symlink loops, dangling links."""

from __future__ import annotations

import os
from pathlib import Path

from vitdex.indexer.scan import scan

EXT = frozenset({".jpg", ".png"})


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_finds_images_recursively_by_extension(tmp_path: Path) -> None:
    a = _touch(tmp_path / "a.JPG", b"12345")
    b = _touch(tmp_path / "sub" / "deeper" / "b.png")
    _touch(tmp_path / "notes.txt")
    _touch(tmp_path / ".hidden.jpg")
    _touch(tmp_path / ".thumbs" / "c.jpg")
    found = list(scan(tmp_path, EXT))
    assert [f.path for f in found] == [str(a), str(b)]
    st = a.stat()
    assert (found[0].size, found[0].mtime_ns) == (5, st.st_mtime_ns)


def test_symlink_loop_and_dangling_link(tmp_path: Path) -> None:
    root = tmp_path / "root"
    img = _touch(root / "x" / "img.jpg")
    (root / "x" / "back").symlink_to(root, target_is_directory=True)
    (root / "self").symlink_to(root / "self")  # a link to itself
    (root / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    found = [f.path for f in scan(root, EXT)]
    assert found == [str(img)]


def test_linked_folder_outside_root_is_followed_once(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    pic = _touch(outside / "o.jpg")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link1").symlink_to(outside, target_is_directory=True)
    (root / "link2").symlink_to(outside, target_is_directory=True)
    found = [f.path for f in scan(root, EXT)]
    assert found == [str(root / "link1" / "o.jpg")]
    assert not list(scan(root, EXT, follow_symlinks=False))
    assert pic.exists()


def test_unreadable_folder_is_skipped(tmp_path: Path) -> None:
    ok = _touch(tmp_path / "ok.jpg")
    locked = tmp_path / "locked"
    _touch(locked / "secret.jpg")
    locked.chmod(0)
    try:
        found = [f.path for f in scan(tmp_path, EXT)]
    finally:
        locked.chmod(0o755)
    if os.geteuid() == 0:  # root reads anything; the folder is then simply scanned
        assert str(ok) in found
    else:
        assert found == [str(ok)]


def test_counts_progress(tmp_path: Path) -> None:
    for i in range(5):
        _touch(tmp_path / f"{i}.jpg")
    seen: list[int] = []
    assert len(list(scan(tmp_path, EXT, on_file=seen.append))) == 5
    assert seen == [1, 2, 3, 4, 5]


def test_missing_root_yields_nothing(tmp_path: Path) -> None:
    assert list(scan(tmp_path / "nope", EXT)) == []
