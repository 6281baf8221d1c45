"""Duplicate scans over a generated photo library indexed with the real pipeline.

The library holds planted copies (byte-identical copies, JPEG re-encodes, 90% centre
crops, half-size resizes) next to distinct photos; the scan at the default threshold
must find exactly the planted families (recall and precision both 1).

The model is a content-following ViT built here: the tiny random test ViT cannot tell
copies from distinct photos (measured in its "cls" space: 85% crops fall to cosine
0.976 while distinct photos reach 0.989), so no threshold would be honest with it.
This one is a real ``ViTModel`` checkpoint whose weights are set by hand: one patch
covering the whole 32×32 input, a patch embedding that averages each colour over a 4×4
grid of blocks, and one layer that copies that patch into [CLS] (uniform attention,
identity value and output projections, no MLP). Its [CLS] vector, after the final
layer norm, is the photo's colour layout centred and scaled: re-encodes and resizes
score 0.9998 or more against their original, 90% crops 0.93 or more, and distinct
generated photos stay below 0.7.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage
from sqlalchemy.orm import Session, sessionmaker

from tests.helpers import index_folder
from tests.photos import make_photo
from vitdex.config import Settings, load_settings
from vitdex.db import ensure_schema, make_engine, session_factory
from vitdex.db.models import Image
from vitdex.search.duplicate_scan import (
    list_duplicate_groups,
    resolve_duplicate_group,
    scan_duplicates,
    undo_duplicate_group,
)
from vitdex.search.duplicates import DEFAULT_THRESHOLD
from vitdex.vectors.store import SearchFilter

SIZE = (256, 192)
#: What the ``catalog`` fixture gives: settings, sessions, the library, each family's files.
Catalog = tuple[Settings, sessionmaker[Session], Path, dict[int, list[Path]]]


def build_layout_vit(folder: Path, *, grid: int = 4, image_size: int = 32) -> Path:
    """Save the content-following ViT described in the module docstring to ``folder``."""
    import torch
    from transformers import ViTConfig, ViTModel

    from vitdex.testing.vit import VIT_BASE_PREPROCESSOR

    hidden = 3 * grid * grid
    config = ViTConfig(
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=3,
        intermediate_size=hidden,
        image_size=image_size,
        patch_size=image_size,
    )
    model = ViTModel(config, add_pooling_layer=False)
    block = image_size // grid
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        weight = model.embeddings.patch_embeddings.projection.weight
        for c in range(3):
            for by in range(grid):
                for bx in range(grid):
                    rows, cols = (
                        slice(by * block, (by + 1) * block),
                        slice(bx * block, (bx + 1) * block),
                    )
                    weight[(c * grid + by) * grid + bx, c, rows, cols] = 1.0 / (block * block)
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
        # Zero queries and keys: [CLS] attends evenly to itself (zero) and the patch.
        for name, param in model.named_parameters():
            if name.endswith(("attention.v_proj.weight", "attention.o_proj.weight")):
                param.copy_(torch.eye(hidden))
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    size = {"height": image_size, "width": image_size}
    (folder / "preprocessor_config.json").write_text(
        json.dumps({**VIT_BASE_PREPROCESSOR, "size": size})
    )
    return folder


@pytest.fixture(scope="session")
def layout_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_layout_vit(tmp_path_factory.mktemp("models") / "layout-vit")


def plant_family(lib: Path, seed: int, variants: tuple[str, ...]) -> list[Path]:
    """An original photo and its copies: ``copy`` (same bytes), ``q60`` (re-encoded),
    ``crop90`` (90% centre crop), ``half`` (half size)."""
    base = make_photo(lib / f"s{seed}.jpg", size=SIZE, seed=seed, quality=92)
    rgb = PILImage.open(base).convert("RGB")
    w, h = rgb.size
    out = [base]
    for variant in variants:
        path = lib / "copies" / f"s{seed}_{variant}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        if variant == "copy":
            shutil.copyfile(base, path)
        elif variant.startswith("q"):
            rgb.save(path, quality=int(variant[1:]))
        elif variant == "crop90":
            cw, ch = int(w * 0.9), int(h * 0.9)
            left, top = (w - cw) // 2, (h - ch) // 2
            rgb.crop((left, top, left + cw, top + ch)).save(path, quality=90)
        elif variant == "half":
            rgb.resize((w // 2, h // 2), PILImage.Resampling.LANCZOS).save(path, quality=90)
        out.append(path)
    return out


FAMILIES: dict[int, tuple[str, ...]] = {
    100: ("copy",),  # exact copies only: an exact group, no near group
    101: ("q60",),
    102: ("crop90",),
    103: ("half",),
    104: ("copy", "crop90", "half"),  # an exact pair inside a near group of four
}
DISTINCT = range(20)


@pytest.fixture(params=["faiss", "qdrant"])
def catalog(
    request: pytest.FixtureRequest,
    vitdex_env: dict[str, str],
    layout_vit: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Catalog]:
    monkeypatch.setenv("VITDEX_MODEL", str(layout_vit))
    monkeypatch.setenv("VITDEX_SPACES", "cls,mean")
    monkeypatch.setenv("VITDEX_VECTOR_BACKEND", request.param)
    lib = tmp_path / "lib"
    families = {seed: plant_family(lib, seed, v) for seed, v in FAMILIES.items()}
    for seed in DISTINCT:
        make_photo(lib / "other" / f"d{seed:02d}.jpg", size=SIZE, seed=seed, quality=92)
    assert index_folder(lib).failed == 0
    settings = load_settings()
    engine = make_engine(settings.storage.resolved_database_url)
    ensure_schema(engine)
    yield settings, session_factory(engine), lib, families
    engine.dispose()


def _ids(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as session:
        return {p: i for i, p in session.query(Image.id, Image.path)}


def _pairs(groups: list[list[int]]) -> set[tuple[int, int]]:
    return {(a, b) for g in groups for a, b in combinations(sorted(g), 2)}


def _open(sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    return list_duplicate_groups(sessions, status="open", limit=200)[2]


def test_planted_copies_are_found_at_the_default_threshold(catalog: Catalog) -> None:
    settings, sessions, _lib, families = catalog
    ids = _ids(sessions)
    progress: list[tuple[int, int]] = []
    report = scan_duplicates(settings, sessions, progress=lambda d, t: progress.append((d, t)))
    assert report.threshold == DEFAULT_THRESHOLD and report.space == "cls"
    n_images = sum(len(f) for f in families.values()) + len(DISTINCT)
    assert report.images == n_images and progress[-1] == (n_images, n_images)

    groups = _open(sessions)
    planted = _pairs([[ids[str(p)] for p in fam] for fam in families.values()])
    found = _pairs([[m["image_id"] for m in g["members"]] for g in groups])
    recall = len(found & planted) / len(planted)
    precision = len(found & planted) / len(found)
    assert (recall, precision) == (1.0, 1.0), (found - planted, planted - found)

    exact = {frozenset(m["image_id"] for m in g["members"]) for g in groups if g["kind"] == "exact"}
    assert exact == {
        frozenset({ids[str(families[s][0])], ids[str(families[s][1])]}) for s in (100, 104)
    }
    near = [g for g in groups if g["kind"] == "near"]
    # Family 100 is linked by its exact pair only: no near group of it.
    assert sorted(len(g["members"]) for g in near) == [2, 2, 2, 4]
    originals = {ids[str(fam[0])] for fam in families.values()}
    for g in groups:
        (base,) = originals & {m["image_id"] for m in g["members"]}
        assert g["suggested_keeper_id"] == base, g
        assert g["members"][0]["image_id"] == base and g["members"][0]["suggested"]
        assert g["members"][0]["score"] == 1.0
        scores = [m["score"] for m in g["members"][1:]]
        assert scores == sorted(scores, reverse=True)
        assert min(scores) >= DEFAULT_THRESHOLD and g["min_score"] == min(scores)
        assert g["reason"]
    half = next(g for g in near if any(m["path"].endswith("s103_half.jpg") for m in g["members"]))
    assert half["reason"] == "largest: 256×192 (0.05 MP); the others 128×96 (0.01 MP)"


def test_decisions_survive_rescans_and_new_photos(catalog: Catalog) -> None:
    settings, sessions, lib, families = catalog
    scan_duplicates(settings, sessions)
    ids = _ids(sessions)

    def group_of(seed: int, kind: str = "near") -> dict[str, Any]:
        base = ids[str(families[seed][0])]
        return next(
            g
            for g in _open(sessions)
            if g["kind"] == kind and base in {m["image_id"] for m in g["members"]}
        )

    kept = resolve_duplicate_group(
        sessions, group_of(103)["id"], "keep", ids[str(families[103][0])]
    )
    assert kept["status"] == "kept" and kept["decided_at"]
    assert [m["marked"] for m in kept["members"]] == [False, True]
    dismissed = resolve_duplicate_group(sessions, group_of(101)["id"], "not_duplicates")
    undone_id = group_of(102)["id"]
    resolve_duplicate_group(sessions, undone_id, "keep", ids[str(families[102][1])])
    reopened = undo_duplicate_group(sessions, undone_id)
    assert reopened["status"] == "open" and reopened["keeper_id"] is None
    assert not any(m["marked"] or m["kept"] for m in reopened["members"])
    before = {g["id"] for g in _open(sessions)}

    # The same library again: decided groups stay as they are, open ones keep their ids.
    report = scan_duplicates(settings, sessions)
    assert report.new_groups == 0 and report.kept_groups == len(before)
    assert {g["id"] for g in _open(sessions)} == before

    # New photos: a re-encode of the kept original and a new family.
    plant_family(lib, 105, ("half",))
    PILImage.open(families[103][0]).save(lib / "copies" / "s103_q70.jpg", quality=70)
    assert index_folder(lib).failed == 0
    ids = _ids(sessions)
    report = scan_duplicates(settings, sessions)
    assert report.new_groups == 2 and report.kept_groups == len(before)
    after = _open(sessions)
    assert {g["id"] for g in after} >= before
    new = [{m["path"] for m in g["members"]} for g in after if g["id"] not in before]
    assert sorted(new, key=len) == sorted(
        [
            # The marked half-size copy takes no part; the keeper meets its new copy.
            {str(families[103][0]), str(lib / "copies" / "s103_q70.jpg")},
            {str(lib / "s105.jpg"), str(lib / "copies" / "s105_half.jpg")},
        ],
        key=len,
    )
    total, counts, decided = list_duplicate_groups(sessions, status="all", limit=200)
    by_id = {g["id"]: g for g in decided}
    assert by_id[kept["id"]]["status"] == "kept" and by_id[kept["id"]]["members"] == kept["members"]
    assert by_id[dismissed["id"]]["status"] == "not_duplicates"
    # "Not duplicates" never comes back: no open group holds that pair again.
    pair = {ids[str(p)] for p in families[101]}
    assert not any(pair <= {m["image_id"] for m in g["members"]} for g in after)
    assert counts == {"open": len(after), "kept": 1, "not_duplicates": 1, "marked_images": 1}
    assert total == len(after) + 2


def test_a_filtered_scan_touches_only_its_photos(catalog: Catalog) -> None:
    settings, sessions, lib, _families = catalog
    scan_duplicates(settings, sessions)
    before = {g["id"]: g for g in _open(sessions)}
    # Only the photos at the library's top level: every copy lives in copies/.
    report = scan_duplicates(
        settings, sessions, filter=SearchFilter(path_prefix=str(lib / "other")), exact=False
    )
    assert report.images == len(DISTINCT) and report.near_groups == 0
    assert {g["id"] for g in _open(sessions)} == set(before)  # groups outside it stay
    report = scan_duplicates(settings, sessions, near=False)
    assert report.near_groups == 0 and report.exact_groups == 2


@pytest.mark.parametrize("catalog", ["faiss"], indirect=True)
def test_two_scans_at_once_leave_one_consistent_set(catalog: Catalog) -> None:
    """Scans racing each other replace the open groups one after the other: the groups
    end up those of one scan, each member set once, never a mix or a double."""
    settings, sessions, _lib, families = catalog
    first = scan_duplicates(settings, sessions)
    expected = {frozenset(m["image_id"] for m in g["members"]) for g in _open(sessions)}
    errors: list[BaseException] = []

    def scan() -> None:
        try:
            scan_duplicates(settings, sessions)
        except BaseException as exc:  # reported below: a thread's error is lost otherwise
            errors.append(exc)

    threads = [threading.Thread(target=scan) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    groups = _open(sessions)
    found = [frozenset(m["image_id"] for m in g["members"]) for g in groups]
    assert len(found) == len(set(found)) == first.exact_groups + first.near_groups
    assert set(found) == expected
    assert len(families) == 5
