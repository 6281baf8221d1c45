"""A SQLite catalog on a full disk: one clear line and exit 4 from the CLI, 503 over HTTP.

The disk is real: a small tmpfs mounted for the test and filled to the last byte, so
SQLite fails as it does for a user (``database or disk is full``, or ``disk I/O error``
when a new connection cannot create its WAL index). The vector store lives on another
disk, so what fails is the catalog alone. Mounting needs root (the test machines and
containers run as root); elsewhere the tests say why they cannot run.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import as_json, run_vitdex, served
from tests.photos import make_photo

pytestmark = pytest.mark.slow

#: Room for the catalog of a few photos, and little more.
DISK_SIZE = "4m"
#: The exit code of a storage failure (the vector store's StoreError uses it too).
STORAGE_EXIT = 4


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted under ``tmp_path``; unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(mount_point)],
        check=True,
        capture_output=True,
    )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(disk: Path) -> Path:
    """Write zeros to ``disk`` until it is full; the filler file, to free it again."""
    filler = disk / "filler"
    chunk = b"\0" * 4096
    with filler.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


@pytest.fixture
def env(small_disk: Path, tmp_path: Path, tiny_vit: Path) -> dict[str, str]:
    """VITDEX_* with the catalog on the small disk and everything else on the big one."""
    return {
        "VITDEX_HOME": str(tmp_path / "home"),
        "VITDEX_DATABASE_URL": f"sqlite:///{small_disk / 'catalog.db'}",
        "VITDEX_MODEL": str(tiny_vit),
        "VITDEX_SPACES": "cls",
        "VITDEX_PRECISION": "fp32",
        "VITDEX_BATCH_SIZE": "4",
        "VITDEX_ALLOWED_ROOTS": str(tmp_path),
    }


def _photos(folder: Path, seed: int) -> Path:
    for i in range(3):
        make_photo(folder / f"p{i}.jpg", size=(64, 48), seed=seed + i)
    return folder


def test_cli_says_one_line_on_a_full_catalog_disk(
    env: dict[str, str], small_disk: Path, tmp_path: Path
) -> None:
    run_vitdex("index", str(_photos(tmp_path / "first", 0)), env=env)
    filler = _fill(small_disk)
    catalog = str(small_disk / "catalog.db")

    for args in (("index", str(_photos(tmp_path / "second", 10))), ("doctor",), ("status",)):
        proc = run_vitdex(*args, env=env, code=None)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == STORAGE_EXIT, (args, proc.returncode, proc.stderr[-3000:])
        assert len(lines) == 1, (args, proc.stderr[-3000:])
        assert lines[0].startswith("error: the catalog ") and catalog in lines[0], lines
        assert "full" in lines[0] or "disk I/O error" in lines[0], lines
        assert "free space" in lines[0], lines
        assert "Traceback" not in proc.stderr

    # Room again: what was committed before the disk filled is all there.
    filler.unlink()
    status = as_json(run_vitdex("status", "--json", env=env))
    assert status["indexed"] == 3 and status["images"] == 3, status


def test_api_answers_503_on_a_full_catalog_disk(
    env: dict[str, str], small_disk: Path, tmp_path: Path
) -> None:
    run_vitdex("index", str(_photos(tmp_path / "first", 0)), env=env)
    with served(env) as base, httpx.Client(base_url=base, timeout=60) as client:
        assert client.get("/api/v1/libraries").status_code == 200
        filler = _fill(small_disk)
        second = _photos(tmp_path / "second", 10)
        answer = client.post("/api/v1/libraries", json={"path": str(second)})
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"].startswith("application/json")
        body = answer.json()
        assert body["status_code"] == 503, body
        assert "catalog" in body["detail"] and "free space" in body["detail"], body
        filler.unlink()
        assert client.get("/api/v1/libraries").status_code == 200
