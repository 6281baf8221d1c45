"""`vitdex status` reports each FAISS space's memory: resident apart from mapped, and what
each configured layer spec resolves to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.photos import make_photo
from vitdex.cli import cli


def run(*args: str) -> Any:
    out = CliRunner().invoke(cli, list(args))
    assert out.exit_code == 0, out.output
    return json.loads(out.output)


def memory_of(space: str) -> dict[str, Any]:
    status = run("status", "--json")
    return dict(next(s for s in status["spaces"] if s["name"] == space)["memory"])


def test_status_reports_resident_and_mapped_memory_per_vector(
    vitdex_env: dict[str, str], tmp_path: Path
) -> None:
    for i in range(12):
        make_photo(tmp_path / "lib" / f"p{i:02d}.jpg", size=(96, 72), seed=i)
    assert run("index", str(tmp_path / "lib"), "--json", "--no-progress")["embedded"] == 12
    status = run("status", "--json")
    cls = next(s for s in status["spaces"] if s["name"] == "cls")
    raw = 4 * cls["dim"]
    flat = memory_of("cls")
    # The run ended with a snapshot: the vectors are mapped, only ids are resident.
    assert flat["raw_storage"] == "mapped"
    assert flat["mapped_bytes_per_vector"] == raw
    assert flat["mapped_bytes"] == 12 * raw
    assert 0 < flat["resident_bytes_per_vector"] < raw
    run("reindex", "--space", "cls", "--index", "hnsw:M=8", "--json")
    hnsw = memory_of("cls")
    # The HNSW index (its copy of each vector and its graph) is mapped from its file too:
    # nothing per vector joins the resident side.
    assert hnsw["index_storage"] == "mapped"
    assert hnsw["resident_bytes_per_vector"] == flat["resident_bytes_per_vector"]
    assert hnsw["mapped_bytes_per_vector"] >= 2 * raw


def test_status_says_which_layer_each_configured_spec_resolves_to(
    vitdex_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VITDEX_SPACES", "cls,cls@2/3,mean@-1,cls@9")
    configured = run("status", "--json")["configured"]
    assert configured["num_layers"] == 4
    by_spec = {entry["spec"]: entry for entry in configured["spaces"]}
    assert by_spec["cls"] == {"spec": "cls", "space": "cls", "layer": None, "error": None}
    assert by_spec["cls@2/3"] == {"spec": "cls@2/3", "space": "cls@3", "layer": 3, "error": None}
    assert (by_spec["mean@-1"]["space"], by_spec["mean@-1"]["layer"]) == ("mean@-1", 4)
    assert by_spec["cls@9"]["space"] is None
    assert "model has 4 layers" in by_spec["cls@9"]["error"]
    # A model not on this machine: nothing resolves, and status still answers.
    monkeypatch.setenv("VITDEX_MODEL", str(tmp_path / "not-here"))
    configured = run("status", "--json")["configured"]
    assert configured["num_layers"] is None
    assert all(e["space"] is None and e["error"] for e in configured["spaces"])
