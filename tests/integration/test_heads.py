"""Heads over a generated library indexed with the real pipeline and the tiny random ViT.

The planted classes are colour casts: every photo is a generated scene (tests/photos.py)
blended half and half with a red, a green or a blue wash. The tiny random ViT's "cls"
vectors keep the colour balance of a photo, so a linear head on them separates the three
casts; it is asked to reach a held-out accuracy of at least 0.9 (measured: 1.0).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from tests.helpers import index_folder
from tests.photos import render
from vitdex.config import Settings, load_settings
from vitdex.db import facets, make_engine, repo, session_factory
from vitdex.db.head_models import Head
from vitdex.db.tags import TagStore
from vitdex.errors import ConfigError, ConflictError, NotFoundError
from vitdex.filters import SearchFilter
from vitdex.search.heads import (
    apply_head,
    correct_label,
    get_head,
    head_labels,
    list_heads,
    queue_head_job,
    train_head,
)
from vitdex.search.service import SearchService
from vitdex.training.curate import CurateOptions, create_dataset

CASTS = {"red": (230, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 230)}
PER_CLASS = 20
#: The held-out accuracy the head must reach on the colour casts.
MIN_ACCURACY = 0.9

Catalog = tuple[Settings, sessionmaker[Session], Path]


def cast_photo(path: Path, cast: str, seed: int) -> Path:
    """A generated scene with a strong colour cast, saved as JPEG."""
    scene = render((64, 48), seed).astype(np.float32)
    washed = 0.5 * scene + 0.5 * np.asarray(CASTS[cast], np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(washed.clip(0, 255).astype(np.uint8)).save(path, quality=92)
    return path


def ids_by_path(sessions: sessionmaker[Session], paths: list[Path]) -> list[int]:
    with sessions() as session:
        found = [repo.find_image_by_path(session, str(p)) for p in paths]
    return [img.id for img in found if img is not None]


def labels_by_path(sessions: sessionmaker[Session]) -> dict[str, dict[str, Any]]:
    """Every label of head "cast", by the photo's path."""
    return {it["path"]: it for it in head_labels(sessions, "cast", limit=1000)["items"]}


@pytest.fixture
def catalog(vitdex_env: dict[str, str], tmp_path: Path) -> Iterator[Catalog]:
    """60 photos in lib/<cast>/, indexed; each tagged with its cast."""
    lib = tmp_path / "lib"
    paths = {
        cast: [
            cast_photo(lib / cast / f"{cast}{n:02d}.jpg", cast, 100 * k + n)
            for n in range(PER_CLASS)
        ]
        for k, cast in enumerate(CASTS)
    }
    index_folder(lib)
    settings = load_settings()
    engine = make_engine(settings.storage.resolved_database_url)
    sessions = session_factory(engine)
    for cast, files in paths.items():
        TagStore(sessions).add(cast, ids_by_path(sessions, files))
    yield settings, sessions, lib
    engine.dispose()


def test_train_apply_correct_and_filter(catalog: Catalog) -> None:
    settings, sessions, lib = catalog
    head = train_head(settings, sessions, "cast", space="cls", from_tags=["red", "green", "blue"])
    report = head["report"]
    assert head["classes"] == ["red", "green", "blue"] and head["space"] == "cls"
    assert report["accuracy"] >= MIN_ACCURACY, report
    assert report["test_count"] == 12 and report["train_count"] == 48
    assert [c["support"] for c in report["classes"]] == [4, 4, 4]
    assert np.asarray(report["confusion"]).sum() == 12
    assert any("refit on all examples" in n for n in report["notes"])
    with pytest.raises(ConflictError, match="exists"):
        train_head(settings, sessions, "cast", from_tags=["red", "blue"])

    applied = apply_head(settings, sessions, "cast")
    assert applied["labelled"] == 3 * PER_CLASS
    assert sum(applied["label_counts"].values()) == 3 * PER_CLASS

    red = ids_by_path(sessions, sorted((lib / "red").iterdir()))
    blue = ids_by_path(sessions, sorted((lib / "blue").iterdir()))
    fixed = correct_label(sessions, "cast", red[0], "BLUE")
    assert (fixed["label"], fixed["source"], fixed["confidence"]) == ("blue", "corrected", 1.0)
    with pytest.raises(ConfigError, match="classes: red, green, blue"):
        correct_label(sessions, "cast", red[1], "purple")
    apply_head(settings, sessions, "cast")  # the correction survives a new apply
    page = head_labels(sessions, "cast", source="corrected")
    assert [(it["image_id"], it["label"]) for it in page["items"]] == [(red[0], "blue")]

    # Filters: HEAD:LABEL in any case, on the catalog and on similar search.
    with sessions() as session:
        cls = repo.get_space(session, "cls")
        labelled_blue = repo.filter_image_ids(
            session, SearchFilter(head_labels=("cast:Blue",)), cls.id
        )
        both = repo.filter_image_ids(
            session, SearchFilter(head_labels=("cast:blue",), tags=("red",)), cls.id
        )
        misses = facets.filter_misses(session, SearchFilter(head_labels=("kind:red", "cast:bleu")))
    assert set(blue) | {red[0]} <= set(labelled_blue) and both == [red[0]]
    assert "head cast" in misses[0].message and "cast:blue" in misses[1].message
    (found,) = SearchService(settings, sessions).similar(
        ids=[red[2]], k=10, space="cls", filter=SearchFilter(head_labels=("cast:blue",))
    )
    assert found.hits and {h.image_id for h in found.hits} <= set(labelled_blue)

    # Curation: only photos the head calls blue become instance candidates.
    curated = create_dataset(
        settings,
        sessions,
        "blues",
        [red[2]],
        prompt="a photo of sks",
        options=CurateOptions(k=8, head_labels=("cast:BLUE",)),
    )
    candidates = {it["image_id"] for it in curated["items"] if it["reason"] != "seed"}
    assert candidates and candidates <= set(labelled_blue)
    assert curated["dataset"]["params"]["head_labels"] == ["cast:BLUE"]
    with pytest.raises(ConfigError, match="--head-label: no photo has head label 'cast:bleu'"):
        create_dataset(
            settings,
            sessions,
            "none",
            [red[2]],
            prompt="a photo of sks",
            options=CurateOptions(head_labels=("cast:bleu",)),
        )

    ordered = head_labels(sessions, "cast", order="uncertain", limit=5, settings=settings)
    margins = [it["margin"] for it in ordered["items"]]
    assert margins == sorted(margins) and ordered["total"] == 3 * PER_CLASS
    assert all(it["runner_up"] in CASTS for it in ordered["items"] if it["source"] == "predicted")
    assert list_heads(sessions)[0]["corrections"] == 1


def test_labels_follow_reindex_moves_and_new_photos(
    catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    settings, sessions, lib = catalog
    train_head(settings, sessions, "cast", from_tags=["red", "green", "blue"])
    apply_head(settings, sessions, "cast")
    red0 = ids_by_path(sessions, [lib / "red" / "red00.jpg"])[0]
    correct_label(sessions, "cast", red0, "green")
    before = get_head(sessions, "cast")["label_counts"]

    index_folder(lib)  # unchanged files keep their labels
    assert get_head(sessions, "cast")["label_counts"] == before

    (lib / "red" / "red00.jpg").rename(lib / "red" / "moved.jpg")
    new = cast_photo(lib / "blue" / "late.jpg", "blue", 999)
    index_folder(lib)
    with sessions() as session:
        assert repo.get_image(session, red0).path == str(lib / "red" / "moved.jpg")
    moved = correct_label(sessions, "cast", red0, "green")
    assert moved["path"] == str(lib / "red" / "moved.jpg")
    late = labels_by_path(sessions)[str(new)]
    assert (late["label"], late["source"]) == ("blue", "predicted")

    # Another space is refused; a changed model is refused and labels no new photo.
    with pytest.raises(ConfigError, match="trained on space 'cls'"):
        train_head(settings, sessions, "cast", space="cls@2", from_tags=["red"], replace=True)
    with sessions() as session:
        session.execute(update(Head).values(model_revision="other-revision"))
        session.commit()
    with pytest.raises(ConfigError, match="retrain it"):
        apply_head(settings, sessions, "cast")
    with pytest.raises(ConfigError, match="retrain it"):
        queue_head_job(sessions, "head-apply", {"name": "cast"})
    newer = cast_photo(lib / "green" / "later.jpg", "green", 998)
    with caplog.at_level(logging.WARNING):
        index_folder(lib)
    assert "until it is retrained" in caplog.text
    assert str(newer) not in labels_by_path(sessions)
    # Retraining on the same space is the way out; the corrections become examples.
    again = train_head(settings, sessions, "cast", from_tags=["red", "green", "blue"], replace=True)
    assert again["model_matches"] and any("corrections" in n for n in again["report"]["notes"])


def test_folders_one_tag_and_refusals(catalog: Catalog, tmp_path: Path) -> None:
    settings, sessions, lib = catalog
    head = train_head(settings, sessions, "folder-cast", from_folder=str(lib), seed=3)
    assert head["classes"] == ["blue", "green", "red"] and head["source"] == "folders"
    assert head["report"]["accuracy"] >= MIN_ACCURACY

    one = train_head(settings, sessions, "is-red", from_tags=["red"])
    assert one["classes"] == ["red", "other"] and one["report"]["examples"]["other"] == 40
    assert any("random sample" in n for n in one["report"]["notes"])

    outside = tmp_path / "elsewhere"
    (outside / "a").mkdir(parents=True)
    link = lib / "link"
    link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(ConfigError, match="not inside an indexed library"):
        train_head(settings, sessions, "x", from_folder=str(link))
    shutil.rmtree(outside)
    link.unlink()
    with pytest.raises(ConfigError, match="lower-case"):
        train_head(settings, sessions, "Bad Name", from_tags=["red", "blue"])
    with pytest.raises(ConfigError, match="unknown tag 'nope'"):
        train_head(settings, sessions, "x", from_tags=["red", "nope"])
    TagStore(sessions).add("few", ids_by_path(sessions, sorted((lib / "red").iterdir()))[:3])
    with pytest.raises(ConfigError, match="class 'few' has 3 example photos"):
        train_head(settings, sessions, "x", from_tags=["few", "blue"])
    with pytest.raises(NotFoundError, match="heads: folder-cast, is-red"):
        apply_head(settings, sessions, "nope")
    job = queue_head_job(sessions, "head-train", {"name": "y", "from_tags": ["red", "blue"]})
    assert job["kind"] == "head-train" and job["state"] == "queued"
    with pytest.raises(ConfigError, match="not inside an indexed library"):
        queue_head_job(sessions, "head-train", {"name": "z", "from_folder": str(tmp_path)})
    with pytest.raises(ConfigError, match="head label 'cast' is not HEAD:LABEL"):
        from vitdex.search.cluster import filter_from_params

        filter_from_params({"head_labels": ["cast"]})
