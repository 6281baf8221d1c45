"""The indexing pipeline on the tiny ViT, on SQLite and PostgreSQL.

Each test checks the invariant the design rests on: after any run, every indexed image has
exactly one vector in every current space, and the store holds nothing else.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from tests.photos import make_all_formats, make_broken_files, make_photo
from vitdex.config import Settings, load_settings
from vitdex.db import Image, ImageLabel, ImageStatus, ensure_schema, make_engine, repo
from vitdex.db import session_factory as make_sessions
from vitdex.errors import SpaceMismatchError
from vitdex.indexer.embedder import Embedder
from vitdex.indexer.pipeline import Indexer, IndexReport
from vitdex.vectors.factory import open_store


def _catalog(settings: Settings) -> sessionmaker[Session]:
    engine = make_engine(settings.storage.resolved_database_url)
    ensure_schema(engine)
    return make_sessions(engine)


def run_index(*paths: Path, **kwargs: bool) -> IndexReport:
    settings = load_settings()
    sessions = _catalog(settings)
    embedder = Embedder.from_settings(settings.model)
    return Indexer(settings, sessions, embedder).run(list(paths), **kwargs)


def consistent_state() -> dict[str, dict[int, np.ndarray]]:
    """Assert the store/catalog invariant; return each space's vectors by image id."""
    settings = load_settings()
    sessions = _catalog(settings)
    current = Embedder.from_settings(settings.model).known_spaces()
    assert current is not None
    out: dict[str, dict[int, np.ndarray]] = {}
    with sessions() as session:
        indexed = set(session.scalars(select(Image.id).where(Image.status == ImageStatus.INDEXED)))
        for space in repo.list_spaces(session):
            if space.name not in {s.name for s in current}:
                continue
            rows = repo.vector_image_ids(session, space.id)
            store = open_store(settings, space.name, space.dim)
            ids = store.ids()
            assert len(ids) == len(set(ids.tolist())), "duplicate ids in the store"
            assert store.count() == len(ids)
            assert sorted(ids.tolist()) == rows, f"store and catalog disagree in {space.name}"
            assert set(rows) == indexed, f"indexed images without vectors in {space.name}"
            vectors = store.get(ids) if len(ids) else np.zeros((0, space.dim), np.float32)
            out[space.name] = {int(i): v for i, v in zip(ids, vectors, strict=True)}
            store.close()
    return out


def _photos(folder: Path, n: int, start: int = 0) -> list[Path]:
    return [
        make_photo(folder / f"p{i:03d}.jpg", size=(96, 72), seed=i) for i in range(start, start + n)
    ]


def test_index_everything_once(vitdex_env: dict[str, str], tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    formats = make_all_formats(lib / "formats")
    broken = make_broken_files(lib / "broken")
    (lib / "notes.txt").write_text("not scanned: wrong extension")
    report = run_index(lib)
    assert report.scanned == len(formats) + len(broken)
    assert report.failed == len(broken)
    assert report.embedded == len(formats)
    reasons = {Path(f["path"]).name: f["error"] for f in report.failures}
    assert set(reasons) == {p.name for p in broken.values()}
    assert "empty" in reasons["empty.jpg"]
    assert "VITDEX_MAX_MEGAPIXELS" in reasons["bomb.png"]
    vectors = consistent_state()
    assert set(vectors) == {"cls", "cls@2"}
    for space_vectors in vectors.values():
        assert len(space_vectors) == len(formats)
        norms = np.linalg.norm(np.stack(list(space_vectors.values())), axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-4)

    settings = load_settings()
    with _catalog(settings)() as session:
        failed = session.scalars(select(Image).where(Image.status == ImageStatus.FAILED)).all()
        assert {Path(img.path).name for img in failed} == set(reasons)
        assert all(img.error for img in failed)
        # One pass stores the top-5 labels of each embedded image, best first.
        n_labels = session.scalar(select(func.count()).select_from(ImageLabel))
        assert n_labels == 5 * len(formats)
        labels = repo.labels_of(session, [img.id for img in session.scalars(select(Image))])
        for ranked in labels.values():
            scores = [score for _, score in ranked]
            assert scores == sorted(scores, reverse=True)


def test_exif_is_recorded(vitdex_env: dict[str, str], tmp_path: Path) -> None:
    from datetime import datetime

    lib = tmp_path / "lib"
    make_photo(
        lib / "cam.jpg",
        size=(80, 60),
        orientation=6,
        taken_at=datetime(2024, 7, 1, 12, 30, 5),
        camera=("Canon", "EOS R5"),
        gps=(48.8584, -2.2945),
    )
    run_index(lib)
    with _catalog(load_settings())() as session:
        img = session.scalars(select(Image)).one()
        assert (img.width, img.height) == (80, 60)
        assert img.orientation == 6
        assert img.taken_at == datetime(2024, 7, 1, 12, 30, 5)
        assert (img.camera_make, img.camera_model) == ("Canon", "EOS R5")
        assert img.gps_lat == pytest.approx(48.8584, abs=1e-4)
        assert img.gps_lon == pytest.approx(-2.2945, abs=1e-4)
        assert img.format == "JPEG"
        assert img.sha256 and len(img.sha256) == 64


def test_rerun_changes_deletes_renames_and_duplicates(
    vitdex_env: dict[str, str], tmp_path: Path
) -> None:
    lib = tmp_path / "lib"
    photos = _photos(lib, 8)
    first = run_index(lib)
    assert (first.embedded, first.new) == (8, 8)
    before = consistent_state()

    again = run_index(lib)
    assert (again.embedded, again.unchanged, again.new) == (0, 8, 0)

    # touched (same bytes, new mtime): hashed, not embedded
    os.utime(photos[0], ns=(1_000_000_000, 1_000_000_000))
    # changed content at the same path: re-embedded under the same id
    make_photo(photos[1], size=(96, 72), seed=101)
    # deleted
    photos[2].unlink()
    # renamed into a sub-folder: same content, keeps its id and vectors
    (lib / "moved").mkdir()
    moved_to = lib / "moved" / "renamed.jpg"
    photos[3].rename(moved_to)
    # duplicate of an indexed photo: vectors copied, not recomputed
    shutil.copyfile(photos[4], lib / "copy-of-p004.jpg")
    # a brand-new photo
    make_photo(lib / "new.jpg", size=(96, 72), seed=55)

    report = run_index(lib)
    assert report.embedded == 2  # the changed one and the new one
    assert report.changed == 1
    assert report.reused == 1
    assert report.moved == 1
    assert report.deleted == 1
    assert report.unchanged == 4 + 1  # 4 untouched + the touched one
    after = consistent_state()

    settings = load_settings()
    with _catalog(settings)() as session:
        by_path = {img.path: img for img in session.scalars(select(Image))}
        old_ids = {p.name: by_path.get(str(p)) for p in photos}
        moved_row = by_path[str(moved_to)]
        assert by_path[str(photos[2])].status == ImageStatus.MISSING
        copy_row = by_path[str(lib / "copy-of-p004.jpg")]
        orig_row = by_path[str(photos[4])]
        changed_row = by_path[str(photos[1])]
    assert old_ids["p003.jpg"] is None  # the old path is gone from the catalog
    for space, vectors in after.items():
        # moved keeps the very vectors it had
        moved_id = moved_row.id
        assert moved_id in before[space]
        np.testing.assert_array_equal(vectors[moved_id], before[space][moved_id])
        # duplicate got the original's vectors
        np.testing.assert_array_equal(vectors[copy_row.id], vectors[orig_row.id])
        # changed content gave new vectors under the same id
        assert not np.allclose(vectors[changed_row.id], before[space][changed_row.id])
        assert by_path[str(photos[2])].id not in vectors
    assert copy_row.width == orig_row.width and copy_row.sha256 == orig_row.sha256


def test_failed_files_are_not_retried_until_changed(
    vitdex_env: dict[str, str], tmp_path: Path
) -> None:
    lib = tmp_path / "lib"
    _photos(lib, 2)
    bad = lib / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    assert run_index(lib).failed == 1
    assert run_index(lib).failed == 0  # unchanged failed file costs nothing
    assert run_index(lib, retry_failed=True).failed == 1
    make_photo(bad, size=(96, 72), seed=9)  # fixed by the user
    report = run_index(lib)
    assert (report.failed, report.embedded) == (0, 1)
    consistent_state()


def test_photo_that_breaks_loses_its_vectors(vitdex_env: dict[str, str], tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    photos = _photos(lib, 3)
    run_index(lib)
    photos[0].write_bytes(photos[0].read_bytes()[:200])  # truncated in place
    report = run_index(lib)
    assert report.failed == 1
    state = consistent_state()
    assert all(len(v) == 2 for v in state.values())


def test_symlink_loops_and_dangling_links(vitdex_env: dict[str, str], tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    _photos(lib / "a", 2)
    (lib / "a" / "loop").symlink_to(lib, target_is_directory=True)
    (lib / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (lib / "alias.jpg").symlink_to(lib / "a" / "p000.jpg")
    report = run_index(lib)
    assert report.scanned == 2
    assert report.embedded == 2
    consistent_state()


def test_repair_after_store_and_catalog_disagree(
    vitdex_env: dict[str, str], tmp_path: Path
) -> None:
    lib = tmp_path / "lib"
    _photos(lib, 4)
    run_index(lib)
    settings = load_settings()
    sessions = _catalog(settings)
    with sessions() as session:
        space = repo.get_space(session, "cls")
        ids = repo.vector_image_ids(session, space.id)
    store = open_store(settings, "cls", space.dim)
    # a stray vector for an id the catalog never committed, and a lost vector
    store.upsert(np.asarray([999_999], np.int64), np.ones((1, space.dim), np.float32))
    store.delete(np.asarray([ids[0]], np.int64))
    store.close()
    report = run_index(lib)
    assert report.repaired == 2
    assert report.embedded == 1  # only the image that lost its vector
    consistent_state()


def test_new_space_embeds_existing_images(
    vitdex_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = tmp_path / "lib"
    _photos(lib, 3)
    run_index(lib)
    monkeypatch.setenv("VITDEX_SPACES", "cls,cls@2,mean@3")
    report = run_index(lib)
    assert report.embedded == 3
    assert set(consistent_state()) == {"cls", "cls@2", "mean@3"}


def test_default_spaces_fit_a_four_layer_vit(
    vitdex_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default used to be cls,cls@8, which no ViT under 8 layers can fill.
    monkeypatch.delenv("VITDEX_SPACES")
    lib = tmp_path / "lib"
    _photos(lib, 3)
    report = run_index(lib)
    assert report.spaces == ["cls", "cls@3"]  # 2/3 of 4 layers, rounded
    assert report.embedded == 3
    assert set(consistent_state()) == {"cls", "cls@3"}
    # The resolved names are known before the model loads: nothing is read again.
    again = run_index(lib)
    assert (again.embedded, again.unchanged, again.spaces) == (0, 3, ["cls", "cls@3"])
    with _catalog(load_settings())() as session:
        assert repo.get_space(session, "cls@3").layer == "cls@3"


def test_model_change_is_refused_then_reembedded(
    vitdex_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tiny_vit_headless: Path,
) -> None:
    lib = tmp_path / "lib"
    _photos(lib, 3)
    run_index(lib)
    monkeypatch.setenv("VITDEX_MODEL", str(tiny_vit_headless))
    with pytest.raises(SpaceMismatchError, match="--reembed"):
        run_index(lib)
    report = run_index(lib, reembed=True)
    assert report.embedded == 3
    consistent_state()
    with _catalog(load_settings())() as session:
        assert repo.get_space(session, "cls").model_id == str(tiny_vit_headless.resolve())


def test_nested_library_is_absorbed(vitdex_env: dict[str, str], tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    _photos(lib / "inner", 2)
    _photos(lib, 1, start=10)
    run_index(lib / "inner")
    report = run_index(lib)
    assert (report.embedded, report.unchanged) == (1, 2)
    with _catalog(load_settings())() as session:
        assert [lib_.root for lib_ in repo.list_libraries(session)] == [str(lib.resolve())]
    # scanning the inner folder again scans only it, as part of the outer library
    assert run_index(lib / "inner").scanned == 2
    assert run_index(lib).deleted == 0
