"""No photo path leaves its library or VITDEX_ALLOWED_ROOTS, symlinks included (issue 10.1).

A library holds a link to a JPEG outside it, a link to ``/etc/passwd``, a link to a photo
inside it, and folder links in and out. Indexing, ``/file``, ``/thumbnail``, the decoder,
exports and training data must read the in-library ones and refuse the rest, also after
an indexed photo is replaced by a link out. Catalog paths run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import TestClient

import vitdex.paths
from tests.helpers import index_folder
from tests.photos import make_photo
from vitdex.api import create_app
from vitdex.config import load_settings
from vitdex.db import datasets, make_engine, repo, session_factory
from vitdex.db.datasets import ItemRow
from vitdex.errors import ImageError, PathRefusedError
from vitdex.indexer.images import decode_image
from vitdex.paths import open_confined, read_confined
from vitdex.training.data import Augmentation, load_examples, load_pixels
from vitdex.training.export import export_dataset

Client = TestClient[Litestar]
PASSWD = Path("/etc/passwd")
needs_passwd = pytest.mark.skipif(not PASSWD.is_file(), reason="no /etc/passwd here")


@dataclass
class Setup:
    """A library with links in and out, and the outside files they point at."""

    lib: Path
    outside: Path
    secret: Path  # a real JPEG outside the library: indexable, were it read


def _make(tmp_path: Path) -> Setup:
    lib = tmp_path / "lib"
    for i in range(5):
        make_photo(lib / f"p{i:02d}.jpg", size=(96, 72), seed=i)
    outside = tmp_path / "outside"
    secret = make_photo(outside / "secret.jpg", size=(96, 72), seed=40)
    make_photo(outside / "folder" / "away.jpg", size=(96, 72), seed=41)
    (lib / "escape.jpg").symlink_to(secret)
    if PASSWD.is_file():
        (lib / "passwd.jpg").symlink_to(PASSWD)
    (lib / "outdir").symlink_to(outside / "folder", target_is_directory=True)
    # Hidden folders are not scanned: these are reached only through the links.
    make_photo(lib / ".store" / "kept.jpg", size=(96, 72), seed=42)
    make_photo(lib / ".more" / "deep.jpg", size=(96, 72), seed=43)
    (lib / "alias.jpg").symlink_to(lib / ".store" / "kept.jpg")
    (lib / "indir").symlink_to(lib / ".more", target_is_directory=True)
    return Setup(lib, outside, secret)


@pytest.fixture
def setup(vitdex_env: dict[str, str], tmp_path: Path) -> Setup:
    return _make(tmp_path)


@pytest.fixture
def client(setup: Setup) -> Iterator[Client]:
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


def _images(client: Client) -> dict[str, dict[str, object]]:
    page = client.get("/api/v1/images", params={"limit": 100}).json()
    return {str(img["path"]): img for img in page["images"]}


def _refused(client: Client, image_id: object) -> None:
    for url in (f"/api/v1/images/{image_id}/file", f"/api/v1/images/{image_id}/thumbnail"):
        answer = client.get(url)
        assert answer.status_code == 403, (url, answer.status_code, answer.content[:200])
        assert answer.headers["content-type"].startswith("application/json")
        assert "outside" in answer.json()["detail"] or "symlink" in answer.json()["detail"]


def test_links_out_are_not_indexed_and_not_served(setup: Setup, client: Client) -> None:
    report = index_folder(setup.lib)
    lib = setup.lib
    failed = {f["path"]: f["error"] for f in report.failures}
    # Recorded as failed, with the reason: not silently left out, not indexed.
    assert "leads outside its library folder" in failed[str(lib / "escape.jpg")]
    if PASSWD.is_file():
        assert "leads outside" in failed[str(lib / "passwd.jpg")]
    images = _images(client)
    assert not any(path.startswith(str(lib / "outdir")) for path in images)  # not followed
    assert images[str(lib / "escape.jpg")]["status"] == "failed"
    # Nothing of the target is in the catalog: the link's own size, no hash.
    escape = images[str(lib / "escape.jpg")]
    assert escape["sha256"] is None and escape["size"] != setup.secret.stat().st_size

    # In-library links (file and folder) are indexed and served like any photo.
    for name, real in (("alias.jpg", ".store/kept.jpg"), ("indir/deep.jpg", ".more/deep.jpg")):
        img = images[str(lib / name)]
        assert img["status"] == "indexed", img
        got = client.get(f"/api/v1/images/{img['id']}/file")
        assert got.status_code == 200 and got.content == (lib / real).read_bytes()
        assert client.get(f"/api/v1/images/{img['id']}/thumbnail").status_code == 200

    _refused(client, escape["id"])
    if PASSWD.is_file():
        _refused(client, images[str(lib / "passwd.jpg")]["id"])


def test_a_photo_replaced_by_a_link_out_is_refused(setup: Setup, client: Client) -> None:
    index_folder(setup.lib)
    images = _images(client)
    victims = [setup.lib / "p01.jpg", setup.lib / "p02.jpg"]
    ids = [images[str(p)]["id"] for p in victims]
    for image_id in ids:  # served, and a thumbnail cached, while they are photos
        assert client.get(f"/api/v1/images/{image_id}/file").status_code == 200
        assert client.get(f"/api/v1/images/{image_id}/thumbnail").status_code == 200
    targets = [setup.secret, PASSWD if PASSWD.is_file() else setup.secret]
    for victim, target in zip(victims, targets, strict=True):
        victim.unlink()
        victim.symlink_to(target)
    for image_id in ids:
        _refused(client, image_id)  # the cached thumbnail included
        big = client.get(f"/api/v1/images/{image_id}/thumbnail", params={"size": 512})
        assert big.status_code == 403

    # A re-index reads neither target: both fail with the reason, no vectors kept.
    report = index_folder(setup.lib)
    failed = {f["path"]: f["error"] for f in report.failures}
    assert all("leads outside" in failed[str(v)] for v in victims)
    after = _images(client)
    assert [after[str(v)]["status"] for v in victims] == ["failed", "failed"]
    secret_sha = hashlib.sha256(setup.secret.read_bytes()).hexdigest()
    assert secret_sha not in {img["sha256"] for img in after.values()}


def test_the_allowed_roots_widen_where_links_may_point(
    vitdex_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A link from one allowed folder to another is fine; a link outside all is not.
    allowed = tmp_path / "allowed"
    lib = allowed / "lib"
    make_photo(lib / "p.jpg", size=(96, 72), seed=1)
    shared = make_photo(allowed / "shared" / "s.jpg", size=(96, 72), seed=2)
    secret = make_photo(tmp_path / "elsewhere" / "x.jpg", size=(96, 72), seed=3)
    (lib / "shared.jpg").symlink_to(shared)
    (lib / "x.jpg").symlink_to(secret)
    monkeypatch.setenv("VITDEX_ALLOWED_ROOTS", str(allowed))
    report = index_folder(lib)
    assert [f["path"] for f in report.failures] == [str(lib / "x.jpg")]
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        images = _images(client)
        ok = client.get(f"/api/v1/images/{images[str(lib / 'shared.jpg')]['id']}/file")
        assert ok.status_code == 200 and ok.content == shared.read_bytes()
        _refused(client, images[str(lib / "x.jpg")]["id"])


def test_export_skips_a_photo_that_links_out(setup: Setup) -> None:
    index_folder(setup.lib)
    settings = load_settings()
    engine = make_engine(settings.storage.resolved_database_url)
    sessions = session_factory(engine)
    try:
        with sessions() as session:
            by_path = {img.path: img.id for img in repo.get_images(session, range(1, 100)).values()}
            dataset = datasets.create_dataset(
                session, name="rex", prompt="sks dog", class_prompt=None, space_id=None, params={}
            )
            names = ["p00.jpg", "p01.jpg", "alias.jpg"]
            rows = [
                ItemRow(by_path[str(setup.lib / n)], "instance", rank, 1.0, True, "seed")
                for rank, n in enumerate(names)
            ]
            datasets.set_items(session, dataset.id, rows)
            session.commit()
        (setup.lib / "p01.jpg").unlink()
        (setup.lib / "p01.jpg").symlink_to(setup.secret)
        result = export_dataset(
            settings,
            sessions,
            "rex",
            setup.outside.parent / "export",
            resolution=64,
            detect_faces=False,
        )
    finally:
        engine.dispose()
    assert result.instance == 2
    assert [s["path"] for s in result.skipped] == [str(setup.lib / "p01.jpg")]
    assert "leads outside" in result.skipped[0]["error"]


# --------------------------------------------------------------------------- no catalog


def test_the_decoder_refuses_links_out(tmp_path: Path) -> None:
    setup = _make(tmp_path)
    within = (setup.lib.resolve(),)
    with pytest.raises(PathRefusedError, match="leads outside"):
        decode_image(setup.lib / "escape.jpg", within=within)
    assert decode_image(setup.lib / "alias.jpg", within=within).width == 96
    # Without folders to stay in, a link as the last component is refused (O_NOFOLLOW).
    with pytest.raises(PathRefusedError, match="symlink"):
        decode_image(setup.lib / "escape.jpg")
    if PASSWD.is_file():
        with pytest.raises(PathRefusedError):
            decode_image(setup.lib / "passwd.jpg", within=within)
        with pytest.raises(PathRefusedError):
            decode_image(setup.lib / "passwd.jpg")


def test_a_link_swapped_in_after_the_check_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = tmp_path / "lib"
    make_photo(lib / "sub" / "a.jpg", size=(32, 32), seed=1)
    make_photo(tmp_path / "outside" / "a.jpg", size=(32, 32), seed=2)
    checked = lib / "sub" / "a.jpg"
    assert read_confined(checked, (lib,)) == checked.read_bytes()
    # The check passes on the real folder; then the folder becomes a link out.
    monkeypatch.setattr(vitdex.paths, "confine", lambda path, within, scope="": Path(path))
    (lib / "sub").rename(lib / "was-sub")
    (lib / "sub").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(PathRefusedError, match="symlink"):
        read_confined(checked, (lib,))


def test_only_regular_files_are_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(PathRefusedError, match="not a regular file"):  # and no hang
        open_confined(fifo, (tmp_path,))
    with pytest.raises(PathRefusedError, match="not a regular file"):
        open_confined(tmp_path, (tmp_path,))
    with pytest.raises(FileNotFoundError):
        open_confined(tmp_path / "nope.jpg", (tmp_path,))


def test_training_data_stays_in_its_folder(tmp_path: Path) -> None:
    setup = _make(tmp_path)
    folder = tmp_path / "train"
    make_photo(folder / "0000.png", size=(64, 64), seed=5)
    make_photo(folder / "extra" / "one.png", size=(64, 64), seed=6)
    (folder / "0001.png").symlink_to(folder / "extra" / "one.png")  # inside: fine
    assert [e.image.name for e in load_examples(folder, "sks")] == ["0000.png", "0001.png"]

    (folder / "0002.png").symlink_to(setup.secret)
    with pytest.raises(PathRefusedError, match="outside the training folder"):
        load_examples(folder, "sks")
    with pytest.raises(ImageError, match="outside the training folder"):
        load_pixels(folder / "0002.png", 32, Augmentation(False, 0.5, 0.5))
    (folder / "0002.png").unlink()

    if PASSWD.is_file():  # a caption sidecar is read too: never /etc/passwd
        (folder / "0000.txt").symlink_to(PASSWD)
        with pytest.raises(PathRefusedError, match="outside the training folder"):
            load_examples(folder, "sks")
