"""Saved searches: save, list, show, run and delete through the API and the CLI, on
SQLite and PostgreSQL; a run answers like ``POST /api/v1/similar`` with the same query."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from litestar.testing import TestClient

from tests.photos import make_photo
from vitdex.api import create_app
from vitdex.cli import cli
from vitdex.config import load_settings
from vitdex.db import ensure_schema, make_engine, repo, session_factory
from vitdex.indexer.embedder import Embedder
from vitdex.indexer.pipeline import Indexer
from vitdex.search.service import SearchService


@dataclass
class Library:
    service: SearchService
    lib: Path
    ids: list[int]


@pytest.fixture
def library(vitdex_env: dict[str, str], tmp_path: Path) -> Library:
    lib = tmp_path / "lib"
    for i in range(14):
        when = datetime(2020, 1 + i % 12, 1 + i, 12, 0, 0)
        make_photo(
            lib / ("a" if i % 2 else "b") / f"p{i:02d}.jpg", size=(96, 72), seed=i, taken_at=when
        )
    settings = load_settings()
    engine = make_engine(settings.storage.resolved_database_url)
    ensure_schema(engine)
    sessions = session_factory(engine)
    Indexer(settings, sessions, Embedder.from_settings(settings.model)).run([lib])
    with sessions() as session:
        ids = repo.vector_image_ids(session, repo.get_space(session, "cls").id)
    return Library(SearchService(settings, sessions), lib, ids)


@pytest.fixture
def client(library: Library) -> Iterator[TestClient]:  # type: ignore[type-arg]
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


def test_api_save_list_run_delete(client: TestClient, library: Library) -> None:  # type: ignore[type-arg]
    a, b, c = library.ids[0], library.ids[3], library.ids[6]
    folder = str(library.lib.resolve() / "a")
    body = {
        "name": "beach dogs",
        "image_ids": [a, b],
        "negative_ids": [c],
        "min_score": -1.0,
        "k": 4,
        "filter": {"folder": folder, "taken_after": "2000-01-01"},
    }
    made = client.post("/api/v1/saved-searches", json=body)
    assert made.status_code == 201, made.text
    saved = made.json()
    assert saved["name"] == "beach dogs" and saved["query"]["image_ids"] == [a, b]
    assert saved["query"]["filter"]["taken_after"] == "2000-01-01T00:00:00"
    assert saved["query"]["filter"]["folder"] == folder
    sid = saved["id"]

    # Running it answers as POST /similar does with the same query.
    params: dict[str, Any] = {"k": 4, "min_score": -1.0, "folder": folder}
    params["taken_after"] = "2000-01-01"
    direct = client.post(
        "/api/v1/similar", json={"image_ids": [a, b], "negative_ids": [c]}, params=params
    ).json()
    ran = client.post(f"/api/v1/saved-searches/{sid}/run")
    assert ran.status_code == 200, ran.text
    assert ran.json() == direct
    assert direct["hits"] and all("/a/" in h["path"] for h in direct["hits"])
    second = client.post(f"/api/v1/saved-searches/{sid}/run", params={"offset": 4, "k": 2}).json()
    params.update(offset=4, k=2)
    again = client.post(
        "/api/v1/similar", json={"image_ids": [a, b], "negative_ids": [c]}, params=params
    )
    assert second == again.json()

    # A taken name is a conflict unless replaced; the list and one search.
    clash = client.post("/api/v1/saved-searches", json=body)
    assert clash.status_code == 409 and "already exists" in clash.json()["detail"]
    replaced = client.post(
        "/api/v1/saved-searches", json={**body, "image_ids": [b], "replace": True}
    )
    assert replaced.status_code == 201 and replaced.json()["id"] == sid
    assert replaced.json()["query"]["image_ids"] == [b]
    client.post("/api/v1/saved-searches", json={"name": "another", "image_ids": [a]})
    listed = client.get("/api/v1/saved-searches").json()["saved_searches"]
    assert [s["name"] for s in listed] == ["another", "beach dogs"]
    assert client.get(f"/api/v1/saved-searches/{sid}").json() == replaced.json()

    for bad, message in [
        ({"name": "x", "image_ids": []}, "at least one positive"),
        ({"name": "12", "image_ids": [a]}, "cannot be a number"),
        ({"name": "x", "image_ids": [a], "negative_ids": [a]}, "both a positive"),
        ({"name": "x", "image_ids": [a], "filter": {"taken_after": "soon"}}, "taken_after"),
        ({"name": "x", "image_ids": [a], "k": None}, "k, a min_score"),
    ]:
        refused = client.post("/api/v1/saved-searches", json=bad)
        assert refused.status_code == 400, (bad, refused.text)
        assert message in refused.json()["detail"], refused.text
    unknown = client.post("/api/v1/saved-searches", json={"name": "x", "image_ids": [10**9]})
    assert unknown.status_code == 404 and str(10**9) in unknown.json()["detail"]
    # An upload cannot be saved: only JSON with catalog ids is taken.
    upload = client.post("/api/v1/saved-searches", files={"file": ("x.jpg", b"123", "image/jpeg")})
    assert upload.status_code == 415

    gone = client.delete(f"/api/v1/saved-searches/{sid}")
    assert gone.status_code == 200 and gone.json() == {
        "id": sid,
        "name": "beach dogs",
        "deleted": True,
    }
    assert client.get(f"/api/v1/saved-searches/{sid}").status_code == 404
    assert client.post(f"/api/v1/saved-searches/{sid}/run").status_code == 404


def test_run_after_an_example_left_the_catalog(client: TestClient, library: Library) -> None:  # type: ignore[type-arg]
    a, c = library.ids[1], library.ids[2]
    sid = client.post(
        "/api/v1/saved-searches", json={"name": "n", "image_ids": [a], "negative_ids": [c]}
    ).json()["id"]
    with library.service.sessions.begin() as session:
        repo.delete_images(session, [c])
    ran = client.post(f"/api/v1/saved-searches/{sid}/run")
    assert ran.status_code == 404
    assert f"image {c}" in ran.json()["detail"] and "'n'" in ran.json()["detail"]
    result = CliRunner().invoke(cli, ["searches", "run", "n"])
    assert result.exit_code == 2 and f"image {c}" in result.output


def _cli(*args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == code, result.output
    return json.loads(result.stdout) if "--json" in args else result


def test_cli_save_list_run_delete(library: Library) -> None:
    a, b, c = library.ids[4], library.ids[5], library.ids[9]
    (want,) = _cli(
        "similar", "--id", str(a), "--id", str(b), "--not", str(c), "--min-score", "0",
        "--tag", "x", "--json",
    )  # fmt: skip
    assert want["hits"] == []  # no photo has tag x yet
    saved = _cli(
        "searches", "save", "mine", "--id", str(a), "--id", str(b), "--not", str(c),
        "--min-score", "0", "--json",
    )  # fmt: skip
    assert saved["query"]["k"] is None  # a cut-off without --k: every hit above it
    (direct,) = _cli(
        "similar", "--id", str(a), "--id", str(b), "--not", str(c), "--min-score", "0", "--json"
    )
    ran = _cli("searches", "run", "mine", "--json")
    assert [r["hits"] for r in ran] == [direct["hits"]] and direct["hits"]
    table = _cli("searches", "run", "mine").stdout
    assert table.count("\n") == len(direct["hits"]) + 2
    capped = _cli("searches", "run", str(saved["id"]), "--k", "2")
    assert "more hits score at least" in capped.stderr

    listed = _cli("searches", "list").stdout
    assert "mine" in listed and f"+{a} +{b} -{c}" in listed
    assert _cli("searches", "save", "mine", "--id", str(a), code=2).output.count("already exists")
    _cli("searches", "save", "mine", "--id", str(a), "--k", "3", "--tag", "x", "--replace")
    assert _cli("searches", "list", "--json")[0]["query"]["filter"]["tag"] == ["x"]
    refused = _cli("searches", "save", "file", "--id", str(a), "--not", "photo.jpg", code=2)
    assert "catalog ids only" in refused.output
    assert "deleted saved search 'mine'" in _cli("searches", "delete", "mine").stdout
    assert "no saved search named 'mine'" in _cli("searches", "run", "mine", code=2).output
