"""Maps: the PCA layout against numpy, the cache and when it goes stale, the HTTP routes."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from tests.helpers import wait_for_job
from tests.photos import make_photo
from vitdex.api import create_app
from vitdex.config import load_settings
from vitdex.db.jobs import catalog_sessions
from vitdex.db.repo import get_space
from vitdex.search.map_cache import map_path
from vitdex.search.projection import display_xy, pca_2d
from vitdex.vectors.factory import open_store

Client = TestClient[Litestar]


def _reference(x: np.ndarray) -> np.ndarray:
    """The top two principal components' scores, from the covariance's eigenvectors."""
    x64 = x.astype(np.float64)
    _, vecs = np.linalg.eigh(np.cov(x64, rowvar=False))
    scores: np.ndarray = (x64 - x64.mean(axis=0)) @ vecs[:, ::-1][:, :2]
    return scores


@pytest.mark.parametrize(("n", "dim", "chunk"), [(3000, 64, 700), (400, 1100, 128)])
def test_pca_matches_the_covariance_eigenvectors(n: int, dim: int, chunk: int) -> None:
    rng = np.random.default_rng(3)
    # Embedding-like: a large shared direction, then two strong axes, then noise.
    common = rng.standard_normal(dim) * 4
    axes = np.linalg.qr(rng.standard_normal((dim, 2)))[0].T
    x = (
        common
        + rng.standard_normal((n, 2)) @ (axes * [[3.0], [1.5]])
        + 0.1 * rng.standard_normal((n, dim))
    )
    x = x.astype(np.float32)
    got = pca_2d(x, chunk=chunk)
    want = _reference(x)
    assert got.shape == (n, 2) and got.dtype == np.float32
    for j in range(2):  # equal up to the sign of each axis
        sign = np.sign(np.dot(got[:, j], want[:, j]))
        np.testing.assert_allclose(sign * got[:, j], want[:, j], rtol=1e-3, atol=2e-3)
    # The same data gives the same picture, not its mirror image.
    again = pca_2d(x[::-1].copy(), chunk=chunk)[::-1]
    np.testing.assert_allclose(again, got, atol=1e-5)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "allowed"
    for i in range(12):
        make_photo(root / "lib" / f"p{i:02d}.jpg", size=(96, 72), seed=i)
    for i in range(5):
        make_photo(root / "other" / f"q{i:02d}.jpg", size=(96, 72), seed=40 + i)
    return root


@pytest.fixture
def client(
    vitdex_env: dict[str, str], photos: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Client]:
    monkeypatch.setenv("VITDEX_ALLOWED_ROOTS", str(photos))
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


def _index(client: Client, folder: Path) -> int:
    body = client.post("/api/v1/libraries", json={"path": str(folder)}).json()
    assert wait_for_job(client, body["job"]["id"])["state"] == "succeeded"
    return int(body["library"]["id"])


def _compute(client: Client, space: str = "cls", **extra: object) -> dict[str, object]:
    started = client.post("/api/v1/maps", json={"space": space, "method": "pca", **extra})
    assert started.status_code == 202, started.text
    job = wait_for_job(client, started.json()["job"]["id"])
    assert job["kind"] == "map" and job["state"] == "succeeded", job
    counts: dict[str, object] = job["counts"]
    return counts


def _state(client: Client, space: str = "cls") -> str:
    maps = client.get("/api/v1/maps").json()["maps"]
    return str(next(m for m in maps if m["space"] == space and m["method"] == "pca")["state"])


def test_map_is_computed_cached_and_goes_stale(client: Client, photos: Path) -> None:
    missing = client.get("/api/v1/maps/cls")
    assert missing.status_code == 404 and "no space" in missing.json()["detail"]
    lib = _index(client, photos / "lib")
    other = _index(client, photos / "other")
    listed = client.get("/api/v1/maps").json()
    assert "pca" in listed["methods"]
    assert {(m["space"], m["state"]) for m in listed["maps"] if m["method"] == "pca"} == {
        ("cls", "missing"),
        ("cls@2", "missing"),
    }
    not_yet = client.get("/api/v1/maps/cls")
    assert not_yet.status_code == 404 and "POST /api/v1/maps" in not_yet.json()["detail"]

    assert _compute(client) == {"space": "cls", "method": "pca", "points": 17, "reused": False}
    assert _state(client) == "fresh"
    body = client.get("/api/v1/maps/cls").json()
    ids = body["ids"]
    assert len(ids) == len(body["x"]) == len(body["y"]) == len(body["label"]) == 17
    assert ids == sorted(ids)
    assert min(body["x"] + body["y"]) == 0.0 and max(body["x"] + body["y"]) == 1.0
    assert all(round(v, 4) == v for v in body["x"] + body["y"])
    assert sorted(set(body["library_id"])) == [lib, other]
    assert body["cluster"] is None
    assert all(-1 <= i < len(body["label_names"]) for i in body["label"])

    # The points are the PCA of the stored vectors (as numpy finds it), moved into [0, 1].
    settings = load_settings()
    with catalog_sessions(settings.storage.resolved_database_url)() as session:
        dim = get_space(session, "cls").dim
    store = open_store(settings, "cls", dim)
    try:
        x = store.get(np.asarray(ids))
    finally:
        store.close()
    want = display_xy(_reference(x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))
    got = np.column_stack([body["x"], body["y"]])
    for j in range(2):
        w = (
            want[:, j]
            if np.corrcoef(got[:, j], want[:, j])[0, 1] > 0
            else want[:, j].max() - want[:, j]
        )
        np.testing.assert_allclose(got[:, j], w, atol=2e-3)

    # Nothing changed: the job reuses the file.
    path = map_path(settings, "cls", "pca")
    before = path.stat().st_mtime_ns
    assert _compute(client)["reused"] is True
    assert path.stat().st_mtime_ns == before
    assert _compute(client, force=True)["reused"] is False

    # A new photo makes the map stale (409) until it is computed again.
    make_photo(photos / "lib" / "new.jpg", size=(96, 72), seed=99)
    rescan = client.post(f"/api/v1/libraries/{lib}/scan")
    assert wait_for_job(client, rescan.json()["job"]["id"])["state"] == "succeeded"
    stale = client.get("/api/v1/maps/cls")
    assert stale.status_code == 409 and "out of date" in stale.json()["detail"]
    assert _state(client) == "stale"
    assert _compute(client)["points"] == 18
    # Re-embedding the same photos changes the vectors but not the ids: stale too.
    reembed = client.post(f"/api/v1/libraries/{other}/scan", json={"reembed": True})
    assert wait_for_job(client, reembed.json()["job"]["id"])["state"] == "succeeded"
    assert _state(client) == "stale"
    assert _compute(client)["reused"] is False
    # Forgetting a library drops its points.
    assert client.delete(f"/api/v1/libraries/{other}").status_code == 200
    assert client.get("/api/v1/maps/cls").status_code == 409
    assert _compute(client)["points"] == 13
    assert len(client.get("/api/v1/maps/cls").json()["ids"]) == 13


def test_map_colours_by_cluster_and_refuses_bad_input(client: Client, photos: Path) -> None:
    _index(client, photos / "lib")
    _compute(client)
    _compute(client, space="cls@2")
    runs = {}
    for space in ("cls", "cls@2"):
        started = client.post("/api/v1/clusters", json={"space": space, "k": 3})
        runs[space] = wait_for_job(client, started.json()["job"]["id"])["counts"]["run_id"]
    body = client.get("/api/v1/maps/cls", params={"cluster_run": runs["cls"]}).json()
    assert body["cluster_run"] == runs["cls"]
    assert sorted(set(body["cluster"])) == [0, 1, 2]
    run = client.get(f"/api/v1/clusters/{runs['cls']}", params={"members_limit": 100}).json()
    by_id = {m["image_id"]: c["label"] for c in run["clusters"] for m in c["members"]}
    assert [by_id[i] for i in body["ids"]] == body["cluster"]

    cases = [
        (client.get("/api/v1/maps/cls", params={"cluster_run": runs["cls@2"]}), 400),
        (client.get("/api/v1/maps/cls", params={"cluster_run": 999}), 404),
        (client.get("/api/v1/maps/cls", params={"cluster_run": 0}), 400),
        (client.get("/api/v1/maps/cls", params={"method": "tsne"}), 400),
        (client.get("/api/v1/maps/nope"), 404),
        (client.post("/api/v1/maps", json={"space": "nope"}), 404),
        (client.post("/api/v1/maps", json={"space": "cls", "method": "tsne"}), 400),
        (client.post("/api/v1/maps", json={"space": 3}), 400),
    ]
    if importlib.util.find_spec("umap") is None:
        cases.append((client.post("/api/v1/maps", json={"method": "umap"}), 400))
    for response, status in cases:
        assert response.status_code == status, response.text
        assert response.json()["detail"]


@pytest.mark.skipif(importlib.util.find_spec("umap") is None, reason="umap-learn is not installed")
def test_umap_map(client: Client, photos: Path) -> None:
    _index(client, photos / "lib")
    started = client.post("/api/v1/maps", json={"space": "cls", "method": "umap"})
    job = wait_for_job(client, started.json()["job"]["id"], timeout=300)
    assert job["state"] == "succeeded", job
    body = client.get("/api/v1/maps/cls", params={"method": "umap"}).json()
    assert len(body["ids"]) == 12 and np.isfinite(body["x"]).all()
