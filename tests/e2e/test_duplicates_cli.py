"""``vitdex duplicates``: scan a small library, review it with keep / undo / not-duplicates."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import as_json, run_vitdex
from tests.integration.test_duplicates_library import build_layout_vit, plant_family
from tests.photos import make_photo


@pytest.fixture
def library(vitdex_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    model = build_layout_vit(tmp_path / "layout-vit")
    monkeypatch.setenv("VITDEX_MODEL", str(model))
    monkeypatch.setenv("VITDEX_SPACES", "cls")
    lib = tmp_path / "lib"
    plant_family(lib, 100, ("copy",))
    plant_family(lib, 101, ("half",))
    for seed in range(4):
        make_photo(lib / "other" / f"d{seed}.jpg", size=(256, 192), seed=seed)
    run_vitdex("index", "--no-progress", str(lib))
    return lib


def test_scan_and_review(library: Path) -> None:
    scan = run_vitdex("duplicates")
    # Progress and the summary go to stderr; the groups to stdout.
    assert "finding duplicates" in scan.stderr
    assert "scanned 8 photos" in scan.stderr and "1 exact and 1 near groups (2 new)" in scan.stderr
    out = scan.stdout
    assert "group 1 (exact) open" in out and "near, cls ≥ 0.90" in out
    assert str(library / "copies" / "s101_half.jpg") in out
    assert "largest: 256×192 (0.05 MP); the others 128×96 (0.01 MP)" in out
    assert "2 groups; * suggested keeper" in out

    listed = as_json(run_vitdex("duplicates", "list", "--json"))
    assert listed["total"] == 2 and listed["counts"]["open"] == 2
    exact, near = listed["groups"]
    assert (exact["kind"], near["kind"]) == ("exact", "near")
    keeper = near["suggested_keeper_id"]
    other = next(m["image_id"] for m in near["members"] if m["image_id"] != keeper)
    assert near["members"][0]["image_id"] == keeper and near["members"][0]["suggested"]

    kept = run_vitdex("duplicates", "keep", str(near["id"]), str(other)).stdout
    assert f"group {near['id']} (near, cls ≥ 0.90) kept" in kept
    assert f"  K {other:>7}" in kept and f"  x {keeper:>7}" in kept

    # A decided group: a second decision is a conflict; a stranger is a usage error.
    again = run_vitdex("duplicates", "not-duplicates", str(near["id"]), code=2)
    assert "already decided (kept); undo it first" in again.stderr
    stranger = run_vitdex("duplicates", "keep", str(exact["id"]), "999", code=2)
    assert f"image 999 is not a member of group {exact['id']}" in stranger.stderr
    assert "Usage:" in stranger.stderr

    undone = as_json(run_vitdex("duplicates", "undo", str(near["id"]), "--json"))
    assert undone["status"] == "open" and undone["keeper_id"] is None
    run_vitdex("duplicates", "not-duplicates", str(exact["id"]))

    # A rescan: the dismissed pair stays apart, the reopened group keeps its id.
    rescan = as_json(run_vitdex("duplicates", "--json", "--no-progress"))
    assert rescan["report"]["exact_groups"] == 0 and rescan["report"]["new_groups"] == 0
    assert [g["id"] for g in rescan["groups"]] == [near["id"]]
    everything = as_json(run_vitdex("duplicates", "list", "--status", "all", "--json"))
    assert everything["counts"] == {
        "open": 1,
        "kept": 0,
        "not_duplicates": 1,
        "marked_images": 0,
    }
    assert run_vitdex("duplicates", "show", "999", code=2).stderr.endswith(
        "no duplicate group with id 999\n"
    )
