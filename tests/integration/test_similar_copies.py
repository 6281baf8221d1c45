"""Searching by a photo lists its exact copies: only the image at the path given is left
out as the query itself (nothing for an upload), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from litestar.testing import TestClient

from tests.photos import make_photo
from vitdex.api import create_app
from vitdex.cli import cli
from vitdex.config import load_settings
from vitdex.db.jobs import catalog_sessions
from vitdex.indexer.embedder import Embedder
from vitdex.indexer.pipeline import Indexer
from vitdex.search.service import SearchService

COPIES = ["photos/camera/IMG_00003.jpg", "backup/old phone/IMG_00003.jpg", "backup/z/IMG_00003.jpg"]


@pytest.fixture
def library(vitdex_env: dict[str, str], tmp_path: Path) -> Iterator[Path]:
    """Five distinct photos and three byte-identical copies of a sixth, indexed; the
    working directory is the library, so paths can be given as typed."""
    lib = tmp_path / "lib"
    for i in range(5):
        make_photo(lib / "photos" / "camera" / f"IMG_0001{i}.jpg", size=(96, 72), seed=i)
    original = make_photo(lib / COPIES[0], size=(96, 72), seed=42)
    for copy in COPIES[1:]:
        (lib / copy).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(original, lib / copy)
    settings = load_settings()
    sessions = catalog_sessions(settings.storage.resolved_database_url)
    Indexer(settings, sessions, Embedder.from_settings(settings.model)).run([lib])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(lib)
        yield lib


def _similar(*args: str) -> dict[str, object]:
    result = CliRunner().invoke(cli, ["similar", *args, "-k", "20", "--json"])
    assert result.exit_code == 0, result.output
    (out,) = json.loads(result.output)
    assert isinstance(out, dict)
    return out


def _paths(result: dict[str, object]) -> list[str]:
    hits = result["hits"]
    assert isinstance(hits, list)
    return [str(h["path"]) for h in hits]


@pytest.mark.parametrize("query", COPIES)
def test_cli_similar_lists_every_other_copy(library: Path, query: str) -> None:
    result = _similar(query)
    paths = _paths(result)
    others = [str(library / c) for c in COPIES if c != query]
    assert str(library / query) not in paths  # the query itself, and only it, is left out
    assert set(others) <= set(paths[:2]), paths  # the copies are the nearest neighbours
    assert len(paths) == 5 + len(others)
    assert result["image_id"] is not None

    kept = _paths(_similar(query, "--include-self"))
    assert {str(library / c) for c in COPIES} <= set(kept[:3])


def test_by_id_and_by_path_leave_out_the_same_image(library: Path) -> None:
    by_path = _similar(COPIES[1])
    by_id = _similar("--id", str(by_path["image_id"]))
    assert _paths(by_id) == _paths(by_path)


def test_a_copy_is_searched_with_its_stored_vector(library: Path) -> None:
    settings = load_settings()
    service = SearchService(settings, catalog_sessions(settings.storage.resolved_database_url))
    (result,) = service.similar(files=[Path(COPIES[2])], k=20)
    assert service._embedder is None  # no forward pass: the stored vector was reused
    assert {h.path for h in result.hits[:2]} == {str(library / c) for c in COPIES[:2]}


def test_an_upload_leaves_out_nothing(library: Path) -> None:
    data = (library / COPIES[0]).read_bytes()
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        got = client.post(
            "/api/v1/similar",
            files={"file": ("IMG_00003.jpg", data, "image/jpeg")},
            params={"k": 20},
        )
        assert got.status_code == 200, got.text
        body = got.json()
        paths = [h["path"] for h in body["hits"]]
        assert set(paths[:3]) == {str(library / c) for c in COPIES}, paths
        assert body["image_id"] is None and body["query"] == "IMG_00003.jpg"

        # By id over HTTP: that image, and only it, is left out.
        first = client.post("/api/v1/similar", json={"image_id": 1}, params={"k": 20}).json()
        assert 1 not in [h["image_id"] for h in first["hits"]]
        assert len(first["hits"]) == 5 + len(COPIES) - 1
