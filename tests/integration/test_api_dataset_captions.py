"""``PATCH /api/v1/datasets/{id}/items/{image_id}``: a caption set by hand, stored in SQL
and written by the next export instead of the dataset's prompt."""

from __future__ import annotations

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


@pytest.fixture
def client(
    vitdex_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Client]:
    lib = tmp_path / "lib"
    for i in range(6):
        make_photo(lib / f"p{i:02d}.jpg", size=(96, 72), seed=i)
    index_folder(lib)
    monkeypatch.setenv("VITDEX_ALLOWED_ROOTS", str(tmp_path / "allowed"))
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        made = c.post(
            "/api/v1/datasets",
            json={"name": "rex", "prompt": "a photo of sks dog", "seeds": [1], "k": 4},
        )
        assert made.status_code == 201, made.text
        yield c


def item_of(client: Client, image_id: int) -> dict[str, Any]:
    items = client.get("/api/v1/datasets/1").json()["items"]
    return next(i for i in items if i["image_id"] == image_id)


def test_a_caption_set_by_hand_is_stored_and_exported(client: Client) -> None:
    included = [i for i in client.get("/api/v1/datasets/1").json()["items"] if i["included"]]
    first, second = included[0], included[1]
    path = f"/api/v1/datasets/1/items/{first['image_id']}"
    changed = client.patch(path, json={"caption": "  a photo of sks dog on a beach  "})
    assert changed.status_code == 200, changed.text
    assert changed.json()["caption"] == "a photo of sks dog on a beach"
    assert changed.json()["image_id"] == first["image_id"]
    assert item_of(client, first["image_id"])["caption"] == "a photo of sks dog on a beach"

    job = client.post("/api/v1/datasets/1/export", json={"resolution": 64}).json()["job"]
    done = wait_for_job(client, job["id"])
    assert done["state"] == "succeeded", done
    out = Path(done["counts"]["path"])
    captions = sorted(p.read_text().strip() for p in (out / "instance").glob("*.txt"))
    assert "a photo of sks dog on a beach" in captions
    assert captions.count("a photo of sks dog") == len(captions) - 1
    # The export records each item's crop; the hand caption survives it.
    after = item_of(client, first["image_id"])
    assert after["caption"] == "a photo of sks dog on a beach" and after["crop"]["box"]
    assert item_of(client, second["image_id"])["caption"] == "a photo of sks dog"

    # null goes back to the prompt.
    reset = client.patch(path, json={"caption": None})
    assert reset.status_code == 200 and reset.json()["caption"] is None


def test_bad_captions_are_4xx(client: Client) -> None:
    image_id = client.get("/api/v1/datasets/1").json()["items"][0]["image_id"]
    path = f"/api/v1/datasets/1/items/{image_id}"
    cases: list[tuple[str, Any, int, str]] = [
        (path, {"caption": "   "}, 400, "may not be empty"),
        (path, {"caption": "two\nlines"}, 400, "one line"),
        (path, {"caption": "x" * 2001}, 400, "at most 2000"),
        (path, {"caption": 5}, 400, "caption"),
        (path, {}, 400, "caption"),
        (path, {"caption": "ok", "role": "class"}, 404, "no class candidate"),
        (path, {"caption": "ok", "role": "other"}, 400, "role"),
        ("/api/v1/datasets/1/items/999", {"caption": "ok"}, 404, "no instance candidate"),
        ("/api/v1/datasets/77/items/1", {"caption": "ok"}, 404, "dataset"),
    ]
    for url, body, status, words in cases:
        response = client.patch(url, json=body)
        assert response.status_code == status, (body, response.text)
        assert words in response.text, response.text
    assert client.patch("/api/v1/datasets/1/items/0", json={"caption": "ok"}).status_code == 400
    assert item_of(client, image_id)["caption"] is None
