"""Duplicate review over HTTP: scan as a job, list, show, keep, dismiss, undo, and hiding
the marked photos from the image list; jobs on the in-process queue."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from tests.helpers import wait_for_job
from tests.integration.test_duplicates_library import build_layout_vit, plant_family
from tests.photos import make_photo
from vitdex.api import create_app

Client = TestClient[Litestar]

MEMBER_KEYS = {
    "image_id", "path", "width", "height", "size", "taken_at", "format", "score",
    "thumbnail_url", "suggested", "kept", "marked",
}  # fmt: skip
GROUP_KEYS = {
    "id", "kind", "space", "threshold", "status", "suggested_keeper_id", "keeper_id",
    "reason", "min_score", "created_at", "decided_at", "members",
}  # fmt: skip


@pytest.fixture(scope="module")
def layout_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_layout_vit(tmp_path_factory.mktemp("models") / "layout-vit")


@pytest.fixture
def client(
    vitdex_env: dict[str, str], layout_vit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Client]:
    root = tmp_path / "allowed"
    lib = root / "lib"
    plant_family(lib, 100, ("copy",))
    plant_family(lib / "a", 101, ("q60", "half"))
    plant_family(lib / "b", 102, ("crop90",))
    for seed in range(6):
        make_photo(lib / "other" / f"d{seed}.jpg", size=(256, 192), seed=seed)
    monkeypatch.setenv("VITDEX_MODEL", str(layout_vit))
    monkeypatch.setenv("VITDEX_SPACES", "cls,mean")
    monkeypatch.setenv("VITDEX_ALLOWED_ROOTS", str(root))
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        job = c.post("/api/v1/libraries", json={"path": str(lib)}).json()["job"]
        assert wait_for_job(c, job["id"])["state"] == "succeeded"
        yield c


def _scan(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    started = client.post("/api/v1/duplicates/scan", json=body)
    assert started.status_code == 202, started.text
    assert started.json()["job"]["kind"] == "duplicates"
    return wait_for_job(client, started.json()["job"]["id"])


def test_scan_list_and_decide(client: Client) -> None:
    done = _scan(client, {})
    assert done["state"] == "succeeded", done
    counts = done["counts"]
    assert (counts["exact_groups"], counts["near_groups"], counts["new_groups"]) == (1, 2, 3)
    assert counts["images"] == 13 and counts["space"] == "cls" and counts["seconds"] >= 0
    assert done["progress"] == 1.0

    page = client.get("/api/v1/duplicates").json()
    assert set(page) == {"total", "limit", "offset", "counts", "groups"}
    assert (page["total"], page["limit"], page["offset"]) == (3, 50, 0)
    assert page["counts"] == {"open": 3, "kept": 0, "not_duplicates": 0, "marked_images": 0}
    assert [g["id"] for g in page["groups"]] == sorted(g["id"] for g in page["groups"])
    for group in page["groups"]:
        assert set(group) == GROUP_KEYS and group["status"] == "open"
        assert group["created_at"] and group["decided_at"] is None
        for member in group["members"]:
            assert set(member) == MEMBER_KEYS
            assert member["thumbnail_url"] == f"/api/v1/images/{member['image_id']}/thumbnail"
            assert member["format"] == "JPEG" and member["width"] and member["size"] > 0
        assert group["members"][0]["suggested"]
        assert group["members"][0]["image_id"] == group["suggested_keeper_id"]
    exact = client.get("/api/v1/duplicates", params={"kind": "exact"}).json()["groups"]
    assert [(g["space"], g["threshold"]) for g in exact] == [(None, None)]
    near = client.get("/api/v1/duplicates", params={"kind": "near", "space": "cls"}).json()
    assert near["total"] == 2 and all(g["threshold"] == 0.9 for g in near["groups"])
    assert client.get("/api/v1/duplicates", params={"space": "mean"}).json()["total"] == 0
    thumb = client.get(exact[0]["members"][0]["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"

    trio = next(g for g in near["groups"] if len(g["members"]) == 3)
    gid = trio["id"]
    assert client.get(f"/api/v1/duplicates/{gid}").json() == trio
    other = trio["members"][2]["image_id"]
    # A keeper that is not a member is refused, and nothing changes.
    bad = client.post(f"/api/v1/duplicates/{gid}/resolve", json={"action": "keep", "keeper_id": 1})
    assert bad.status_code == 400 and "not a member" in bad.json()["detail"]
    missing = client.post(f"/api/v1/duplicates/{gid}/resolve", json={"action": "keep"})
    assert missing.status_code == 400 and "keeper_id" in missing.json()["detail"]
    assert client.post(f"/api/v1/duplicates/{gid}/resolve", json={"action": "x"}).status_code == 400
    kept = client.post(
        f"/api/v1/duplicates/{gid}/resolve", json={"action": "keep", "keeper_id": other}
    )
    assert kept.status_code == 200, kept.text
    body = kept.json()
    assert body["status"] == "kept" and body["keeper_id"] == other and body["decided_at"]
    assert {m["image_id"]: (m["kept"], m["marked"]) for m in body["members"]} == {
        m["image_id"]: (m["image_id"] == other, m["image_id"] != other) for m in trio["members"]
    }
    again = client.post(f"/api/v1/duplicates/{gid}/resolve", json={"action": "not_duplicates"})
    assert again.status_code == 409 and "already decided (kept)" in again.json()["detail"]

    # Marked photos leave the image list when asked, and only then.
    listed = {i["id"] for i in client.get("/api/v1/images", params={"limit": 100}).json()["images"]}
    hidden = client.get("/api/v1/images", params={"limit": 100, "hide_duplicates": "true"}).json()
    assert listed - {i["id"] for i in hidden["images"]} == {
        m["image_id"] for m in trio["members"] if m["image_id"] != other
    }
    page = client.get("/api/v1/duplicates", params={"status": "all"}).json()
    assert page["counts"] == {"open": 2, "kept": 1, "not_duplicates": 0, "marked_images": 2}
    assert [g["status"] for g in page["groups"]] == ["open", "open", "kept"]  # open first
    assert client.get("/api/v1/duplicates", params={"status": "kept"}).json()["total"] == 1

    undone = client.post(f"/api/v1/duplicates/{gid}/undo")
    assert undone.status_code == 200 and undone.json()["status"] == "open"
    assert undone.json()["keeper_id"] is None and undone.json()["decided_at"] is None
    assert client.post(f"/api/v1/duplicates/{gid}/undo").status_code == 409
    pair = page["groups"][0]["id"]
    dismissed = client.post(f"/api/v1/duplicates/{pair}/resolve", json={"action": "not_duplicates"})
    assert dismissed.status_code == 200 and dismissed.json()["status"] == "not_duplicates"
    assert not any(m["marked"] for m in dismissed.json()["members"])

    # A rescan keeps the decided group and the unchanged open ones, ids and all.
    done = _scan(client, {"exact": True, "near": True})
    assert (done["counts"]["new_groups"], done["counts"]["kept_groups"]) == (0, 2)
    open_ids = {g["id"] for g in client.get("/api/v1/duplicates").json()["groups"]}
    assert pair not in open_ids and gid in open_ids


def test_filtered_and_partial_scans(client: Client, tmp_path: Path) -> None:
    folder = str(tmp_path / "allowed" / "lib" / "a")
    done = _scan(client, {"filter": {"folder": folder}, "threshold": 0.95, "k": 4})
    assert done["state"] == "succeeded", done
    assert done["counts"]["images"] == 3 and done["counts"]["near_groups"] == 1
    assert done["params"]["filter"] == {"path_prefix": folder}
    (group,) = client.get("/api/v1/duplicates").json()["groups"]
    assert group["threshold"] == 0.95 and len(group["members"]) == 3
    done = _scan(client, {"near": False})
    assert done["counts"]["near_groups"] == 0 and done["counts"]["exact_groups"] == 1
    # The exact scan replaced nothing of the near scan's.
    assert client.get("/api/v1/duplicates").json()["total"] == 2
    missed = _scan(client, {"filter": {"camera_make": "aple"}})
    assert missed["state"] == "failed" and "camera make 'aple'" in missed["error"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"threshold": 0}, 400),
        ({"threshold": 1.5}, 400),
        ({"k": 1}, 400),
        ({"k": 5000}, 400),
        ({"exact": False, "near": False}, 400),
        ({"space": "nope"}, 404),
        ({"filter": {"taken_after": "yesterday"}}, 400),
        ({"threshold": "high"}, 400),
    ],
)
def test_bad_scans_are_refused(client: Client, body: dict[str, Any], status: int) -> None:
    response = client.post("/api/v1/duplicates/scan", json=body)
    assert response.status_code == status, response.text
    assert response.json()["detail"]


def test_unknown_groups_and_bad_parameters(client: Client) -> None:
    assert client.get("/api/v1/duplicates/999").status_code == 404
    assert client.post("/api/v1/duplicates/999/undo").status_code == 404
    gone = client.post("/api/v1/duplicates/999/resolve", json={"action": "not_duplicates"})
    assert gone.status_code == 404 and "no duplicate group with id 999" in gone.json()["detail"]
    for params in ({"status": "maybe"}, {"kind": "fuzzy"}, {"limit": 0}, {"limit": 201}):
        assert client.get("/api/v1/duplicates", params=params).status_code == 400, params
    assert client.get("/api/v1/duplicates", params={"limit": 200}).status_code == 200
    assert client.get("/api/v1/duplicates/0").status_code in (400, 404)
