"""``/api/v1/datasets`` through Litestar's test client, over a library indexed for real."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from tests.helpers import index_folder, wait_for_job
from tests.photos import make_photo
from vitdex.api import create_app

Client = TestClient[Litestar]
INT64_MAX = 2**63 - 1


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    root = tmp_path / "allowed"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (root / "escape").symlink_to(tmp_path / "outside", target_is_directory=True)
    return root


@pytest.fixture
def client(
    vitdex_env: dict[str, str], tmp_path: Path, allowed: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Client]:
    lib = tmp_path / "lib"
    for i in range(12):
        make_photo(lib / f"p{i:02d}.jpg", size=(96, 72), seed=i)
    index_folder(lib)
    monkeypatch.setenv("VITDEX_ALLOWED_ROOTS", str(allowed))
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


def create(client: Client, **body: Any) -> Any:
    payload = {"name": "rex", "prompt": "a photo of sks dog", "seeds": [1], "k": 6, **body}
    return client.post("/api/v1/datasets", json=payload)


def test_dataset_lifecycle(client: Client, allowed: Path, tmp_path: Path) -> None:
    made = create(client, seeds=[1, 4], class_prompt="a photo of a dog", class_count=2)
    assert made.status_code == 201, made.text
    body = made.json()
    dataset_id = body["dataset_id"]
    assert body["dataset"]["name"] == "rex" and body["dataset"]["counts"]["class"] == 2
    assert [it["reason"] for it in body["items"][:2]] == ["seed", "seed"]
    reasons = {it["reason"] for it in body["items"]}
    assert reasons <= {"seed", "neighbour", "near_duplicate", "class"}

    page = client.get("/api/v1/datasets").json()
    assert page["total"] == 1 and page["datasets"][0]["id"] == dataset_id
    one = client.get(f"/api/v1/datasets/{dataset_id}", params={"role": "class"})
    assert one.status_code == 200
    assert {it["role"] for it in one.json()["items"]} == {"class"}

    neighbour = next(it for it in body["items"] if it["reason"] == "neighbour")
    out = client.post(
        f"/api/v1/datasets/{dataset_id}/exclude", json={"image_ids": [neighbour["image_id"]]}
    )
    assert out.status_code == 200, out.text
    assert out.json()["changed"][0]["reason"] == "excluded_by_hand"
    back = client.post(
        f"/api/v1/datasets/{dataset_id}/include",
        json={"image_ids": [neighbour["image_id"]], "role": "instance"},
    )
    assert back.status_code == 200 and back.json()["changed"][0]["included"] is True

    # Export into the default folder under VITDEX_HOME, then into an allowed folder.
    # Exports are jobs: 202 with the job, the result in its counts when it succeeds.
    default = client.post(f"/api/v1/datasets/{dataset_id}/export", json={"resolution": 64})
    assert default.status_code == 202, default.text
    job = wait_for_job(client, default.json()["job"]["id"])
    assert job["state"] == "succeeded", job
    assert Path(job["counts"]["path"]).parent.name == "datasets"
    assert job["done"] == job["total"] == job["counts"]["instance"] + job["counts"]["class"]
    target = allowed / "sets" / "rex"
    exported = client.post(
        f"/api/v1/datasets/{dataset_id}/export", json={"path": str(target), "resolution": 64}
    )
    assert exported.status_code == 202, exported.text
    job = wait_for_job(client, exported.json()["job"]["id"])
    assert job["state"] == "succeeded", job
    result = job["counts"]
    assert result["path"] == str(target.resolve()) and result["class"] == 2
    assert len(list((target / "instance").glob("*.png"))) == result["instance"]
    config = tomllib.loads((target / "dataset.toml").read_text("utf-8"))
    assert config["datasets"][0]["resolution"] == 64
    shown = client.get(f"/api/v1/datasets/{dataset_id}").json()
    assert shown["dataset"]["export_path"] == str(target.resolve())
    assert all(it["crop"] for it in shown["items"] if it["included"])

    gone = client.delete(f"/api/v1/datasets/{dataset_id}")
    assert gone.status_code == 200 and gone.json()["deleted"] is True
    assert client.get(f"/api/v1/datasets/{dataset_id}").status_code == 404
    assert client.delete(f"/api/v1/datasets/{dataset_id}").status_code == 404


def test_samplers_through_the_api(client: Client) -> None:
    for sampler, picked in (("diverse", "diverse"), ("representative", "representative")):
        made = create(
            client,
            name=sampler,
            k=8,
            max=4,
            sampler=sampler,
            min_distance=0.001,
            hide_duplicates=True,
        )
        assert made.status_code == 201, made.text
        body = made.json()
        params = body["dataset"]["params"]
        assert (params["sampler"], params["min_distance"], params["hide_duplicates"]) == (
            sampler,
            0.001,
            True,
        )
        instance = [it for it in body["items"] if it["role"] == "instance"]
        included = [it for it in instance if it["included"]]
        assert len(included) == 4 and included[0]["reason"] == "seed"
        assert {it["reason"] for it in included[1:]} <= {picked, "diverse"}
        assert picked in {it["reason"] for it in included}
        out = {it["reason"] for it in instance if not it["included"]}
        assert out <= {"not_sampled", "near_duplicate"} and "not_sampled" in out
        if sampler == "representative":
            assert len(params["clusters"]) == 3
        shown = client.get(f"/api/v1/datasets/{body['dataset_id']}").json()
        assert [it["reason"] for it in shown["items"]] == [it["reason"] for it in body["items"]]


def test_bad_requests_are_4xx_with_a_message(client: Client, allowed: Path) -> None:
    assert create(client).status_code == 201
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({}, 409, "already exists"),
        ({"name": "a", "seeds": []}, 400, "at least one"),
        ({"name": "a", "seeds": [0]}, 400, "between 1 and"),
        ({"name": "a", "seeds": [INT64_MAX + 1]}, 400, ""),
        ({"name": "a", "seeds": [999]}, 404, "no image with id 999"),
        ({"name": "a", "k": 0}, 400, "k must"),
        ({"name": "a", "dedup": 1.5}, 400, "dedup"),
        ({"name": "a", "mmr": -1}, 400, "lambda"),
        ({"name": "a", "space": "nope"}, 400, "unknown space"),
        ({"name": "a", "class_count": 3}, 400, "class prompt"),
        ({"name": "a", "prompt": " "}, 400, "prompt"),
        ({"name": "42"}, 400, "cannot be a number"),
        ({"name": "a", "seeds": "1"}, 400, ""),
        ({"name": "a", "k": "many"}, 400, ""),
        ({"name": "a", "sampler": "diverse"}, 400, "give max"),
        ({"name": "a", "sampler": "random", "max": 3}, 400, ""),
        ({"name": "a", "sampler": "representative", "max": 3, "mmr": 0.5}, 400, "no mmr"),
        ({"name": "a", "min_distance": 1.0}, 400, "min-distance"),
        ({"name": "a", "min_distance": 0.1, "dedup": 0.5}, 400, "contradict"),
        ({"name": "a", "min_distance": 0.1, "dedup": None}, 400, "give one of them"),
        ({"name": "a", "tags": ["no such tag"]}, 400, "no photo has tag 'no such tag'"),
        ({"name": "a", "tags": "dog"}, 400, ""),
    ]
    for body, status, message in cases:
        reply = create(client, **body)
        assert reply.status_code == status, (body, reply.text)
        assert message in reply.json()["detail"], (body, reply.text)
    missing_prompt = client.post("/api/v1/datasets", json={"name": "a", "seeds": [1]})
    assert missing_prompt.status_code == 400

    assert client.get("/api/v1/datasets/999").status_code == 404
    assert client.get("/api/v1/datasets/0").status_code == 400
    assert client.get("/api/v1/datasets/1", params={"role": "x"}).status_code == 400
    include = client.post("/api/v1/datasets/1/include", json={"image_ids": []})
    assert include.status_code == 400
    exclude = client.post("/api/v1/datasets/1/exclude", json={"image_ids": [12345]})
    assert exclude.status_code == 404 and "12345" in exclude.json()["detail"]
    wrong_role = client.post("/api/v1/datasets/1/include", json={"image_ids": [2], "role": "x"})
    assert wrong_role.status_code == 400

    export = "/api/v1/datasets/1/export"
    export_cases: list[tuple[dict[str, Any], int]] = [
        ({"path": "relative/dir"}, 400),
        ({"path": str(allowed.parent / "outside" / "set")}, 403),
        ({"path": str(allowed / "escape" / "set")}, 403),  # a symlink out of the root
        ({"path": str(allowed / ".." / "outside")}, 403),
        ({"resolution": 8}, 400),
        ({"num_repeats": 0}, 400),
    ]
    for body, status in export_cases:
        reply = client.post(export, json=body)
        assert reply.status_code == status, (body, reply.text)
        assert reply.json()["detail"], reply.text
    assert not list((allowed.parent / "outside").iterdir())
