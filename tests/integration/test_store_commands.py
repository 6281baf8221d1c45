"""`vitdex reindex` and `vitdex migrate-store`: change how vectors are stored, never re-embed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.photos import make_photo
from vitdex.cli import cli


def run(*args: str, code: int = 0) -> Any:
    out = CliRunner().invoke(cli, list(args))
    assert out.exit_code == code, out.output
    return json.loads(out.output) if "--json" in args and code == 0 else out.output


def hits(image_id: int, space: str = "cls", **flags: str) -> list[int]:
    extra = [x for k, v in flags.items() for x in (f"--{k.replace('_', '-')}", v)]
    result = run("similar", "--id", str(image_id), "-k", "5", "--space", space, *extra, "--json")
    return [h["image_id"] for h in result[0]["hits"]]


@pytest.fixture
def library(vitdex_env: dict[str, str], tmp_path: Path) -> Path:
    lib = tmp_path / "lib"
    for i in range(40):
        make_photo(lib / ("a" if i % 2 else "b") / f"p{i:02d}.jpg", size=(96, 72), seed=i)
    summary = run("index", str(lib), "--json", "--no-progress")
    assert summary["embedded"] == 40
    return lib


def test_reindex_switches_index_type_without_the_model(
    library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exact = {i: hits(i) for i in (1, 7, 20)}
    # No model is needed: point VITDEX_MODEL somewhere that cannot load.
    monkeypatch.setenv("VITDEX_MODEL", "/nonexistent/model")
    built = run("reindex", "--space", "cls", "--index", "hnsw:M=16,efSearch=64", "--json")
    assert built["count"] == 40 and "HNSW" in built["index_type"]
    assert {i: hits(i) for i in exact} == exact  # 40 vectors: HNSW finds the exact top 5
    status = run("status", "--json")
    cls = next(s for s in status["spaces"] if s["name"] == "cls")
    assert "HNSW" in cls["store"]["index_type"]
    assert cls["store"]["memory_bytes_per_vector"] > 0
    fallback = run("reindex", "--space", "cls", "--index", "ivf:nlist=64", "--json")
    assert fallback["fallback"]  # 40 vectors cannot train 64 lists: exact search meanwhile
    assert {i: hits(i) for i in exact} == exact
    bad = run("reindex", "--space", "cls", "--index", "annoy", code=2)
    assert "flat" in bad and "hnsw" in bad
    run("reindex", "--space", "nope", "--index", "flat", code=2)


def test_migrate_to_qdrant_and_back(library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    on_faiss = {i: hits(i) for i in (2, 9)}
    filtered = hits(2, folder=str(library / "a"))
    moved = run("migrate-store", "--to", "qdrant", "--json")
    assert {(s["space"], s["vectors"]) for s in moved["spaces"]} == {("cls", 40), ("cls@2", 40)}
    run("migrate-store", "--to", "faiss", code=2)  # already on faiss: says so

    monkeypatch.setenv("VITDEX_VECTOR_BACKEND", "qdrant")
    assert {i: hits(i) for i in on_faiss} == on_faiss
    assert hits(2, folder=str(library / "a")) == filtered  # payload filter, same answer
    assert run("doctor", "--json")["ok"] is True

    make_photo(library / "a" / "new.jpg", size=(96, 72), seed=99)
    again = run("index", str(library), "--json", "--no-progress")
    assert (again["embedded"], again["unchanged"]) == (1, 40)
    on_qdrant = {i: hits(i) for i in on_faiss}
    back = run("migrate-store", "--to", "faiss", "--json")
    assert all(s["vectors"] == 41 and s["copied"] == 1 for s in back["spaces"])  # resumable
    monkeypatch.setenv("VITDEX_VECTOR_BACKEND", "faiss")
    assert run("doctor", "--json")["ok"] is True
    assert {i: hits(i) for i in on_faiss} == on_qdrant
