"""The search service's classify over a batch: one bad file costs only its own result."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.photos import make_broken_files, make_photo
from vitdex.config import load_settings
from vitdex.db import ensure_schema, make_engine, session_factory
from vitdex.errors import ImageError, NotFoundError
from vitdex.search.results import Classification
from vitdex.search.service import ClassifyFailure, SearchService


@pytest.fixture
def service(vitdex_env: dict[str, str]) -> SearchService:
    """A service on the tiny classifying ViT and an empty catalog."""
    settings = load_settings()
    engine = make_engine(settings.storage.resolved_database_url)
    ensure_schema(engine)
    return SearchService(settings, session_factory(engine))


def test_classify_each_reports_bad_files_in_place(service: SearchService, tmp_path: Path) -> None:
    good = make_photo(tmp_path / "chelsea.png", seed=1)
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list: milk, eggs\n")
    ghost = tmp_path / "ghost.jpg"
    upload = ("up.jpg", make_photo(tmp_path / "up.jpg", seed=2).read_bytes())

    results = service.classify_each([good, notes, ghost], uploads=[upload, ("bad", b"")], k=2)

    assert [r.query for r in results] == [str(good), str(notes), str(ghost), "up.jpg", "bad"]
    for ok in (results[0], results[3]):
        assert isinstance(ok, Classification) and len(ok.labels) == 2
    for bad, kind in (
        (results[1], ImageError),
        (results[2], NotFoundError),
        (results[4], ImageError),
    ):
        assert isinstance(bad, ClassifyFailure) and isinstance(bad.error, kind)
        assert bad.to_dict() == {"query": bad.query, "labels": [], "error": bad.error.message}
    assert "no such file" in results[2].to_dict()["error"]


def test_classify_still_raises_for_a_bad_file(service: SearchService, tmp_path: Path) -> None:
    """What the API calls with its one upload: a bad one is the request's error (422)."""
    broken = make_broken_files(tmp_path / "junk")
    with pytest.raises(ImageError):
        service.classify(uploads=[("t.jpg", broken["truncated"].read_bytes())])
    with pytest.raises(NotFoundError, match="no such file"):
        service.classify([tmp_path / "ghost.jpg"])
