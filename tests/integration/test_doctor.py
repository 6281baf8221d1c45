"""`vitdex doctor`: finds and repairs disagreement between the catalog and the stores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from tests.photos import make_photo
from vitdex.cli import cli
from vitdex.config import load_settings
from vitdex.db import ensure_schema, make_engine, repo, session_factory
from vitdex.vectors.factory import open_store


def _doctor(*args: str) -> tuple[int, dict[str, Any]]:
    out = CliRunner().invoke(cli, ["doctor", "--json", *args])
    return out.exit_code, json.loads(out.output)


def test_doctor_finds_repairs_and_reindex_heals(vitdex_env: dict[str, str], tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    for i in range(5):
        make_photo(lib / f"p{i}.jpg", size=(96, 72), seed=i)
    runner = CliRunner()
    assert runner.invoke(cli, ["index", str(lib), "--no-progress"]).exit_code == 0
    code, report = _doctor()
    assert code == 0 and report["ok"] is True

    settings = load_settings()
    engine = make_engine(settings.storage.resolved_database_url)
    ensure_schema(engine)
    with session_factory(engine)() as session:
        space = repo.get_space(session, "cls@2")
        lost = repo.vector_image_ids(session, space.id)[1]
    store = open_store(settings, "cls@2", space.dim)
    store.upsert(np.asarray([424242], np.int64), np.eye(1, space.dim, dtype=np.float32))
    store.delete(np.asarray([lost], np.int64))
    store.close()

    code, report = _doctor()
    assert code == 1 and report["ok"] is False
    bad = {s["name"]: s for s in report["spaces"]}["cls@2"]
    assert (bad["strays"], bad["stray_ids"], bad["missing_ids"]) == (1, [424242], [lost])
    assert bad["repaired"] is False

    code, report = _doctor("--repair")
    assert code == 0 and report["ok"] is True
    code, report = _doctor()
    assert code == 0

    healed = runner.invoke(cli, ["index", str(lib), "--json", "--no-progress"])
    assert json.loads(healed.output)["embedded"] == 1
    engine.dispose()


def test_doctor_reports_a_model_mismatch(
    vitdex_env: dict[str, str],
    tmp_path: Path,
    tiny_vit_headless: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lib = tmp_path / "lib"
    make_photo(lib / "a.jpg", seed=1)
    assert CliRunner().invoke(cli, ["index", str(lib), "--no-progress"]).exit_code == 0
    monkeypatch.setenv("VITDEX_MODEL", str(tiny_vit_headless))
    monkeypatch.setenv("VITDEX_SPACES", "cls,mean@1")
    code, report = _doctor()
    assert code == 1
    spaces = {s["name"]: s for s in report["spaces"]}
    assert spaces["cls"]["model_matches"] is False
    assert "--reembed" in spaces["cls"]["advice"]
    assert report["configured_spaces_not_built"] == ["mean@1"]


def test_doctor_knows_the_spaces_relative_specs_fill(
    vitdex_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VITDEX_SPACES", "cls,cls@2/3")
    lib = tmp_path / "lib"
    make_photo(lib / "a.jpg", seed=1)
    assert CliRunner().invoke(cli, ["index", str(lib), "--no-progress"]).exit_code == 0
    code, report = _doctor()
    assert code == 0
    assert {s["name"]: s["configured"] for s in report["spaces"]} == {"cls": True, "cls@3": True}
    assert report["configured_spaces_not_built"] == []
