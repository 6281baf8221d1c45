"""Filtered similar search over an indexed folder (FAISS: ids resolved in SQL)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from tests.photos import make_photo
from vitdex.config import load_settings
from vitdex.db import Image, ensure_schema, make_engine, repo, session_factory
from vitdex.indexer.embedder import Embedder
from vitdex.indexer.pipeline import Indexer
from vitdex.search.service import SearchService
from vitdex.vectors.factory import open_store
from vitdex.vectors.store import SearchFilter

CAMERAS = [("Canon", "EOS R5"), ("Apple", "iPhone 15"), ("Sony", "A7 IV")]


@pytest.fixture(params=["faiss", "qdrant"])
def indexed(
    request: pytest.FixtureRequest,
    vitdex_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[SearchService, Path]:
    """24 photos indexed on each backend (Qdrant in its embedded local mode)."""
    monkeypatch.setenv("VITDEX_VECTOR_BACKEND", request.param)
    lib = tmp_path / "lib"
    for i in range(24):
        folder = lib / ("2023" if i % 2 else "2024") / ("trip" if i % 3 == 0 else "home")
        make_photo(
            folder / f"p{i:02d}.jpg",
            size=(96, 72),
            seed=i,
            taken_at=datetime(2023 + i % 2, 1 + i % 12, 1 + i, 12, 0, 0),
            # One phone wrote its make in capitals: "apple" must find both spellings.
            camera=("APPLE", "iPhone 15") if i == 22 else CAMERAS[i % 3],
        )
    settings = load_settings()
    engine = make_engine(settings.storage.resolved_database_url)
    ensure_schema(engine)
    sessions = session_factory(engine)
    Indexer(settings, sessions, Embedder.from_settings(settings.model)).run([lib])
    return SearchService(settings, sessions), lib


def _truth(service: SearchService, query_id: int, allowed: list[int], k: int) -> list[int]:
    """Brute force: inner products against every allowed vector, best first."""
    settings = service.settings
    with service.sessions() as session:
        space = repo.get_space(session, "cls")
    store = open_store(settings, "cls", space.dim)
    ids = np.asarray([i for i in allowed if i != query_id], np.int64)
    q = store.get(np.asarray([query_id]))[0]
    scores = store.get(ids) @ q
    order = np.argsort(-scores, kind="stable")[:k]
    store.close()
    return [int(ids[j]) for j in order]


def test_each_filter_matches_brute_force(indexed: tuple[SearchService, Path]) -> None:
    service, lib = indexed
    with service.sessions() as session:
        space = repo.get_space(session, "cls")
        all_ids = repo.vector_image_ids(session, space.id)
        images = repo.get_images(session, all_ids)
        labels = repo.labels_of(session, all_ids)
    common_label = labels[all_ids[0]][0][0]
    lib_root = str(lib.resolve())
    filters: dict[str, tuple[SearchFilter, Callable[[Image], bool]]] = {
        "folder": (
            SearchFilter(path_prefix=f"{lib_root}/2024"),
            lambda img: img.path.startswith(f"{lib_root}/2024/"),
        ),
        "nested": (
            SearchFilter(path_prefix=f"{lib_root}/2023/trip"),
            lambda img: img.path.startswith(f"{lib_root}/2023/trip/"),
        ),
        "dates": (
            SearchFilter(taken_after=datetime(2023, 6, 1), taken_before=datetime(2024, 3, 31)),
            # taken_after is inclusive, taken_before exclusive, on every backend
            lambda img: (
                img.taken_at is not None
                and datetime(2023, 6, 1) <= img.taken_at < datetime(2024, 3, 31)
            ),
        ),
        "camera": (
            SearchFilter(camera_make="Apple", camera_model="iPhone 15"),
            lambda img: img.camera_model == "iPhone 15",
        ),
        "camera_any_case": (
            SearchFilter(camera_make="apple", camera_model="IPHONE 15"),
            lambda img: img.camera_model == "iPhone 15",
        ),
        "make_any_case": (
            SearchFilter(camera_make="aPPle"),
            lambda img: (img.camera_make or "").lower() == "apple",
        ),
        "label": (
            SearchFilter(label=common_label),
            lambda img: common_label in [lab for lab, _ in labels[img.id]],
        ),
        "combined": (
            SearchFilter(camera_make="Canon", path_prefix=f"{lib_root}/2024"),
            lambda img: img.camera_make == "Canon" and img.path.startswith(f"{lib_root}/2024/"),
        ),
    }
    query_id = all_ids[0]
    for name, (flt, keep) in filters.items():
        allowed = [i for i in all_ids if keep(images[i])]
        assert allowed, name
        result = service.similar(ids=[query_id], k=5, filter=flt)[0]
        got = [hit.image_id for hit in result.hits]
        assert got == _truth(service, query_id, allowed, 5), name
        assert all(keep(images[i]) for i in got), name


def test_filter_matching_nothing_gives_no_hits(indexed: tuple[SearchService, Path]) -> None:
    service, _ = indexed
    result = service.similar(ids=[1], k=5, filter=SearchFilter(camera_make="Leica"))
    assert result[0].hits == []


def test_filter_value_no_photo_has_names_close_values(
    indexed: tuple[SearchService, Path],
) -> None:
    service, _ = indexed
    flt = SearchFilter(camera_make="aple", camera_model="iphone 15", label="nosuchlabel")
    assert service.similar(ids=[1], k=5, filter=flt)[0].hits == []
    misses = {m.field: m for m in service.filter_misses(flt)}
    # The model exists (in another case), so only make and label are named.
    assert set(misses) == {"camera_make", "label"}
    # Make ignores case, so one spelling is offered: the most common.
    assert misses["camera_make"].close == ("Apple",)
    assert "no photo has camera make 'aple'; close values: " in misses["camera_make"].message
    # Nothing looks like "nosuchlabel": the common labels are listed instead.
    with service.sessions() as session:
        labels = {
            lab for ls in repo.labels_of(session, list(range(1, 25))).values() for lab, _ in ls
        }
    assert not misses["label"].close
    assert misses["label"].common and set(misses["label"].common) <= labels
    assert service.filter_misses(SearchFilter(camera_make="SONY")) == []


def test_cli_filters(vitdex_env: dict[str, str], indexed: tuple[SearchService, Path]) -> None:
    from click.testing import CliRunner

    from vitdex.cli import cli

    _, lib = indexed
    runner = CliRunner()
    out = runner.invoke(
        cli,
        ["similar", "--id", "1", "--camera-make", "Sony", "--folder", str(lib), "--json"],
    )
    assert out.exit_code == 0, out.output
    import json

    hits = json.loads(out.output)[0]["hits"]
    assert hits and all(h["camera_make"] == "Sony" for h in hits)
    bad = runner.invoke(cli, ["similar", "--id", "1", "--taken-after", "yesterday"])
    assert bad.exit_code == 2
    typo = runner.invoke(cli, ["similar", "--id", "1", "--camera-make", "Cannon"])
    assert typo.exit_code == 0, typo.output
    assert "note: no photo has camera make 'Cannon'; close values: Canon" in typo.stderr
    any_case = runner.invoke(cli, ["similar", "--id", "1", "--camera-make", "sony", "--json"])
    assert any_case.exit_code == 0, any_case.output
    hits = json.loads(any_case.stdout)[0]["hits"]
    assert hits and all(h["camera_make"] == "Sony" for h in hits)
