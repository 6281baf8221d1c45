"""The global flags reach everything a command runs: `vitdex --home X --database-url Y ...`
with no ``VITDEX_*`` variable set indexes, searches, curates, trains in the foreground
and on a worker started with the same flags, and serves, all in X and Y; the default
home is never touched.

Real processes, the tiny ViT, a tiny SD pipeline at 32 px for a handful of steps, and a
Redis of the test's own for the worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from tests.helpers import OwnRedis, served
from tests.photos import make_photo
from vitdex.db.models import Checkpoint, Dataset, Image, ImageStatus, ImageVector, TrainingRun

pytestmark = pytest.mark.slow

TRAIN = ("--resolution", "32", "--force", "--mixed-precision", "no", "--device", "cpu")


class Vitdex:
    """``python -m vitdex FLAGS ...`` in an environment without any ``VITDEX_*``
    variable, whose user's home (where the default data folder is) is a folder of the
    test's own."""

    def __init__(self, flags: list[str], user_home: Path, cwd: Path) -> None:
        self.flags = flags
        self.cwd = cwd
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("VITDEX_")}
        self.env["HOME"] = str(user_home)

    def __call__(self, *args: str, timeout: float = 600) -> Any:
        """Run it; its stdout parsed as JSON (every call here asks for --json)."""
        proc = subprocess.run(
            [sys.executable, "-m", "vitdex", *self.flags, *args],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert proc.returncode == 0, f"vitdex {args} exited {proc.returncode}:\n{proc.stderr}"
        return json.loads(proc.stdout) if "--json" in args else proc


def _count(url: str, query: Any) -> int:
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            return int(session.scalar(query) or 0)
    finally:
        engine.dispose()


def test_global_flags_reach_every_command_and_job(
    tmp_path: Path, database_url: str, tiny_vit: Path, tiny_sd: Path
) -> None:
    home = tmp_path / "data"  # X
    user_home = tmp_path / "user"  # where the default home (~/.vitdex) would go
    cwd = tmp_path / "cwd"
    for folder in (user_home, cwd):
        folder.mkdir()
    assert not database_url.startswith("sqlite") or str(home) not in database_url
    redis = OwnRedis(tmp_path)
    redis.start()
    flags = [
        *("--home", str(home), "--database-url", database_url),
        *("--model", str(tiny_vit), "--spaces", "cls,cls@2", "--precision", "fp32"),
        *("--batch-size", "4", "--redis-url", redis.url),
    ]
    vitdex = Vitdex(flags, user_home, cwd)
    try:
        lib = tmp_path / "Pictures"
        for i in range(8):
            make_photo(lib / f"dog{i:02d}.jpg", size=(96, 72), seed=i)
        assert vitdex("index", str(lib), "--json", "--no-progress")["embedded"] == 8
        hits = vitdex("similar", str(lib / "dog01.jpg"), "-k", "3", "--json")[0]["hits"]
        assert len(hits) == 3 and all(h["path"].startswith(str(lib)) for h in hits)
        created = vitdex(
            "dataset", "create", "rex", "--seed", str(lib / "dog00.jpg"), "--k", "4",
            "--prompt", "a photo of sks dog", "--json",
        )  # fmt: skip
        assert created["dataset_id"] == 1

        # In the foreground: the job runs here, with these flags' catalog.
        trained = vitdex(
            "train", "rex", "--base", str(tiny_sd), "--steps", "2",
            "--text-encoder-steps", "1", *TRAIN, "--json",
        )  # fmt: skip
        assert trained["state"] == "succeeded" and trained["steps"] == 3, trained
        assert Path(trained["checkpoint"]["path"]).is_file()
        assert Path(trained["checkpoint"]["path"]).is_relative_to(home)

        # Queued, and run by a worker started with the same flags.
        queued = vitdex(
            "train", "rex", "--base", str(tiny_sd), "--steps", "1",
            "--text-encoder-steps", "0", *TRAIN, "--background", "--json",
        )  # fmt: skip
        assert queued["state"] == "queued"
        vitdex("worker", "--burst", "--no-preload")
        run = vitdex("train", "show", str(queued["run_id"]), "--json")
        assert (run["state"], run["job_state"], run["step"]) == ("succeeded", "succeeded", 1), run
        assert Path(run["checkpoint"]["path"]).is_file()
        assert Path(run["checkpoint"]["path"]).is_relative_to(home)
    finally:
        redis.kill()

    # One worker process, and several (each builds its own app and settings).
    for workers in ("1", "2"):
        with served(
            vitdex.env, flags=flags, serve_args=("--workers", workers), start_timeout=120
        ) as base:
            jobs = httpx.get(f"{base}/api/v1/jobs", timeout=60).json()
            assert {job["kind"] for job in jobs["jobs"]} == {"index", "train"}, jobs
            assert jobs["total"] == 3

    # Everything landed in X and Y...
    assert _count(database_url, select(func.count()).select_from(Image)) == 8
    indexed = select(func.count()).select_from(Image).where(Image.status == ImageStatus.INDEXED)
    assert _count(database_url, indexed) == 8
    assert _count(database_url, select(func.count()).select_from(ImageVector)) == 16
    assert _count(database_url, select(func.count()).select_from(Dataset)) == 1
    assert _count(database_url, select(func.count()).select_from(TrainingRun)) == 2
    assert _count(database_url, select(func.count()).select_from(Checkpoint)) == 2
    assert {p.name for p in (home / "faiss").iterdir()} == {"cls", "cls_at_2"}
    assert not (home / "catalog.db").exists()  # the catalog is Y, not X's default
    # ...and nothing in the default home, nor in the working folder.
    assert not (user_home / ".vitdex").exists()
    assert list(cwd.iterdir()) == []
