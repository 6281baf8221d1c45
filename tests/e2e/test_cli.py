"""The `vitdex` command end to end, as a user runs it: real processes, real files."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import make_url

from tests.helpers import as_json, run_vitdex
from tests.photos import make_broken_files, make_photo
from vitdex.config import DEFAULT_SPACES
from vitdex.db.models import Image, ImageStatus

pytestmark = pytest.mark.slow


def vitdex(
    *args: str, env: dict[str, str], check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return run_vitdex(*args, env=env, code=0 if check else None, timeout=timeout)


@pytest.fixture
def library(tmp_path: Path) -> Path:
    lib = tmp_path / "Pictures"
    for i in range(6):
        make_photo(lib / "trip" / f"img{i}.jpg", size=(96, 72), seed=i)
    # a near-duplicate of img0: the same scene, smaller and re-compressed
    make_photo(lib / "img0-small.jpg", size=(64, 48), seed=0, quality=60)
    make_broken_files(lib / "junk")
    return lib


def test_index_similar_classify_status(vitdex_env: dict[str, str], library: Path) -> None:
    env = vitdex_env
    summary = as_json(vitdex("index", str(library), "--json", env=env))
    assert summary["scanned"] == 12
    assert summary["embedded"] == 7
    assert summary["failed"] == 5
    assert summary["unchanged"] == 0
    assert set(summary["timings"]) >= {"scan", "decode", "embed", "store", "sql"}

    # the next night: nothing changed, nothing embedded
    again = as_json(vitdex("index", str(library), "--json", env=env))
    assert (again["embedded"], again["unchanged"]) == (0, 12)

    query = library / "trip" / "img0.jpg"
    results = as_json(vitdex("similar", str(query), "-k", "3", "--json", env=env))
    assert len(results) == 1 and results[0]["query"] == str(query)
    hits = results[0]["hits"]
    assert len(hits) == 3
    assert str(query) not in [h["path"] for h in hits]  # the query itself is left out
    assert hits[0]["path"] == str(library / "img0-small.jpg")
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert {"image_id", "path", "score", "width", "height", "labels"} <= set(hits[0])

    # by id, and in the intermediate space
    by_id = as_json(
        vitdex("similar", "--id", str(hits[0]["image_id"]), "--space", "cls@2", "--json", env=env)
    )
    assert by_id[0]["image_id"] == hits[0]["image_id"]
    assert by_id[0]["space"] == "cls@2"
    assert len(by_id[0]["hits"]) == 6

    # a photo that is not in the index is embedded on the fly
    outside = make_photo(library.parent / "query.png", size=(96, 72), seed=3)
    fresh = as_json(vitdex("similar", str(outside), "-k", "2", "--json", env=env))
    assert fresh[0]["image_id"] is None
    assert fresh[0]["hits"][0]["path"] == str(library / "trip" / "img3.jpg")

    labels = as_json(vitdex("classify", str(query), "-k", "4", "--json", env=env))
    assert len(labels[0]["labels"]) == 4
    scores = [lab["score"] for lab in labels[0]["labels"]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6

    status = as_json(vitdex("status", "--json", env=env))
    assert (status["images"], status["indexed"], status["failed"]) == (12, 7, 5)
    assert {(s["name"], s["vectors"], s["store_count"]) for s in status["spaces"]} == {
        ("cls", 7, 7),
        ("cls@2", 7, 7),
    }
    assert {Path(f["path"]).name for f in status["failures"]} == {
        "empty.jpg",
        "truncated.jpg",
        "text.jpg",
        "garbage.png",
        "bomb.png",
    }
    readable = vitdex("status", env=env).stdout
    assert "truncated.jpg" in readable and "failed" in readable
    assert "spaces cls (final layer), cls@2 (layer 2 of 4)" in readable
    # The default spaces fit any depth and say what they resolved to.
    default = ("--spaces", ",".join(DEFAULT_SPACES))
    resolved = as_json(vitdex(*default, "status", "--json", env=env))["configured"]
    assert [(s["spec"], s["space"], s["layer"]) for s in resolved["spaces"]] == [
        ("cls", "cls", None),
        ("cls@2/3", "cls@3", 3),
    ]
    assert "cls@2/3 -> cls@3 (layer 3 of 4)" in vitdex(*default, "status", env=env).stdout


def test_bad_arguments_exit_2(vitdex_env: dict[str, str], tmp_path: Path) -> None:
    env = vitdex_env
    missing = vitdex("index", str(tmp_path / "nope"), env=env, check=False)
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr

    empty = as_json(vitdex("index", str(tmp_path), "--json", env=env))
    assert empty["scanned"] == 0

    unknown_space = vitdex("similar", "--id", "1", "--space", "nope", env=env, check=False)
    assert unknown_space.returncode == 2
    assert "the index is empty" in unknown_space.stderr  # no space exists yet

    bad_env = vitdex("status", env={**env, "VITDEX_BATCH_SIZE": "zero"}, check=False)
    assert bad_env.returncode == 2
    assert "VITDEX_BATCH_SIZE" in bad_env.stderr

    no_file = vitdex("classify", str(tmp_path / "ghost.jpg"), env=env, check=False)
    assert no_file.returncode == 2 and "no such file" in no_file.stderr


def test_classify_needs_a_classifier(
    vitdex_env: dict[str, str], tiny_vit_headless: Path, tmp_path: Path
) -> None:
    photo = make_photo(tmp_path / "a.jpg", seed=1)
    env = {**vitdex_env, "VITDEX_MODEL": str(tiny_vit_headless)}
    proc = vitdex("classify", str(photo), env=env, check=False)
    assert proc.returncode == 2
    assert "no classification head" in proc.stderr


def test_unloadable_model_says_how_to_fix(vitdex_env: dict[str, str], tmp_path: Path) -> None:
    photo = make_photo(tmp_path / "lib" / "a.jpg", seed=1)
    env = {**vitdex_env, "VITDEX_MODEL": "no-such-org/no-such-vit"}
    proc = vitdex("index", str(photo.parent), env=env, check=False)
    assert proc.returncode == 3
    assert "VITDEX_MODEL" in proc.stderr
    assert "Traceback" not in proc.stderr


def _indexed_count(database_url: str) -> int:
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.scalar(
                    select(func.count())
                    .select_from(Image)
                    .where(Image.status == ImageStatus.INDEXED)
                )
                or 0
            )
    except Exception:  # the schema may not exist yet at the very start
        return 0
    finally:
        engine.dispose()


def _vectors(env: dict[str, str]) -> dict[str, np.ndarray]:
    """Each photo's `cls` vector as `vitdex similar --id` sees it, keyed by file name."""
    from vitdex.config import load_settings
    from vitdex.db import ensure_schema, make_engine, repo, session_factory
    from vitdex.vectors.factory import open_store

    settings = load_settings(
        home=env["VITDEX_HOME"], database_url=env["VITDEX_DATABASE_URL"], spaces="cls"
    )
    engine = make_engine(settings.storage.resolved_database_url)
    ensure_schema(engine)
    with session_factory(engine)() as session:
        space = repo.get_space(session, "cls")
        ids = repo.vector_image_ids(session, space.id)
        images = repo.get_images(session, ids)
        store = open_store(settings, "cls", space.dim)
        stored = store.ids().tolist()
        assert stored == ids, "store and catalog disagree"
        vectors = store.get(np.asarray(ids, np.int64))
        store.close()
    engine.dispose()
    return {Path(images[i].path).name: v for i, v in zip(ids, vectors, strict=True)}


def test_sigkill_mid_run_then_resume(
    vitdex_env: dict[str, str], tmp_path: Path, database_url: str
) -> None:
    """kill -9 at several points, then a re-run: one vector per image, none lost."""
    lib = tmp_path / "big"
    total = 90
    for i in range(total):
        make_photo(lib / f"{i // 30}" / f"p{i:03d}.jpg", size=(96, 72), seed=i)
    env = {**vitdex_env, "VITDEX_BATCH_SIZE": "1"}
    kills = 0
    for threshold in (5, 30, 60):
        proc = subprocess.Popen(
            [sys.executable, "-m", "vitdex", "index", str(lib), "--json", "--no-progress"],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if _indexed_count(database_url) >= threshold:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.02)
        proc.wait(timeout=60)
    assert kills >= 2, "the runs finished before they could be killed; make them slower"
    assert _indexed_count(database_url) < total

    summary = as_json(vitdex("index", str(lib), "--json", env=env))
    assert summary["embedded"] + summary["unchanged"] == total
    assert _indexed_count(database_url) == total
    resumed = _vectors(env)

    # the same folder indexed in one clean run gives the very same vectors
    clean_env = {
        **env,
        "VITDEX_HOME": str(tmp_path / "clean-home"),
        "VITDEX_DATABASE_URL": f"sqlite:///{tmp_path / 'clean.db'}",
    }
    vitdex("index", str(lib), "--json", env=clean_env)
    clean = _vectors(clean_env)
    assert set(resumed) == set(clean) and len(clean) == total
    for name, vec in clean.items():
        np.testing.assert_allclose(resumed[name], vec, atol=1e-5)


def test_demo_runs_offline(vitdex_env: dict[str, str], tmp_path: Path) -> None:
    env = {**vitdex_env, "VITDEX_HOME": str(tmp_path / "demo")}
    proc = vitdex("demo", "--photos", "4", env=env, timeout=600)
    assert "vitdex similar" in proc.stdout
    assert "embedded" in proc.stdout
    status = as_json(vitdex("status", "--json", env=env))
    assert status["indexed"] >= 4
    shutil.rmtree(tmp_path / "demo")
