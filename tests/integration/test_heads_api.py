"""Heads over HTTP (SQLite and PostgreSQL): train from tags and from a folder as jobs, the
report, apply, the uncertain photos, corrections kept through an apply, deletion, every
route's errors, and ``head_label`` as a filter on the image list, facets, ids, similar
search and tagging by filter. Jobs run on the in-process queue."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from litestar import Litestar
from litestar.testing import TestClient
from PIL import Image

from tests.helpers import wait_for_job
from vitdex.api import create_app

Client = TestClient[Litestar]

HEAD_KEYS = {
    "id", "name", "space", "model_id", "model_revision", "model_matches", "dim", "source",
    "source_spec", "classes", "report", "created_at", "trained_at", "applied_at",
    "label_counts", "labelled", "corrections",
}  # fmt: skip
ITEM_KEYS = {
    "image_id", "path", "label", "confidence", "margin", "source", "runner_up", "thumbnail_url",
}  # fmt: skip
#: Photos per class; two more photos (``misc``) belong to neither.
PER_CLASS = 8


def _kind_photo(path: Path, colour: tuple[int, int, int], seed: int) -> None:
    """A photo mostly of one colour with a few random blocks: the classes differ plainly
    even to the tiny random model, the photos of a class a little."""
    rng = np.random.default_rng(seed)
    pixels = np.empty((96, 128, 3), np.uint8)
    pixels[:] = colour
    for _ in range(4):
        y, x = rng.integers(0, 72), rng.integers(0, 104)
        pixels[y : y + 24, x : x + 24] = rng.integers(0, 256, 3)
    pixels = np.clip(pixels.astype(np.int16) + rng.integers(-20, 21, pixels.shape), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path, quality=92)


def make_kinds_library(lib: Path) -> Path:
    """``kinds/cats`` (reddish), ``kinds/dogs`` (bluish), and two grey ``misc`` photos."""
    for i in range(PER_CLASS):
        _kind_photo(lib / "kinds" / "cats" / f"c{i}.jpg", (200, 40, 40), seed=i)
        _kind_photo(lib / "kinds" / "dogs" / f"d{i}.jpg", (40, 60, 200), seed=100 + i)
    for i in range(2):
        _kind_photo(lib / "misc" / f"m{i}.jpg", (128, 128, 128), seed=200 + i)
    return lib


@pytest.fixture
def client(
    vitdex_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Client]:
    """The library above indexed in space ``cls``, its photos tagged ``cat`` and ``dog``
    by folder."""
    root = tmp_path / "allowed"
    lib = make_kinds_library(root / "lib")
    monkeypatch.setenv("VITDEX_ALLOWED_ROOTS", str(root))
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        job = c.post("/api/v1/libraries", json={"path": str(lib)}).json()["job"]
        assert wait_for_job(c, job["id"])["state"] == "succeeded"
        for tag, folder in (("cat", "cats"), ("dog", "dogs")):
            body = {"filter": {"folder": str(lib / "kinds" / folder)}}
            added = c.post(f"/api/v1/tags/{tag}/images", json=body)
            assert added.json()["added"] == PER_CLASS, added.text
        c.app.state["lib"] = lib
        yield c


def _job(client: Client, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
    """Start a head job (202) and wait for it to end."""
    started = client.request(method, url, **kwargs)
    assert started.status_code == 202, started.text
    return wait_for_job(client, started.json()["job"]["id"])


def _error(response: Any, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, detail


def _ids(client: Client, **params: Any) -> set[int]:
    page = client.get("/api/v1/images", params={"limit": 100, **params})
    assert page.status_code == 200, page.text
    return {i["id"] for i in page.json()["images"]}


def test_train_report_apply_correct_and_filter(client: Client) -> None:
    assert client.get("/api/v1/heads").json() == {"heads": []}
    # Training is refused up front (a 4xx, not a failed job) for what cannot work.
    _error(
        client.post("/api/v1/heads", json={"name": "Kind", "from_tags": ["cat", "dog"]}),
        400,
        "lower-case",
    )
    _error(client.post("/api/v1/heads", json={"name": "kind"}), 400, "exactly one")
    _error(
        client.post(
            "/api/v1/heads", json={"name": "kind", "from_tags": ["cat"], "from_folder": "/x"}
        ),
        400,
        "exactly one",
    )
    _error(
        client.post("/api/v1/heads", json={"name": "kind", "from_tags": ["cat", "horse"]}),
        400,
        "horse",
    )
    _error(
        client.post("/api/v1/heads", json={"name": "kind", "from_tag": ["cat"]}), 400, "from_tag"
    )
    _error(
        client.post(
            "/api/v1/heads", json={"name": "kind", "from_tags": ["cat", "dog"], "seed": -1}
        ),
        400,
        "seed",
    )
    _error(
        client.post(
            "/api/v1/heads",
            json={"name": "kind", "from_tags": ["cat", "dog"], "test_fraction": 0.9},
        ),
        400,
        "test_fraction",
    )
    _error(
        client.post(
            "/api/v1/heads", json={"name": "kind", "from_tags": ["cat", "dog"], "space": "nope"}
        ),
        404,
        "nope",
    )
    _error(client.post("/api/v1/heads", content=b"{}", headers={"Content-Type": "text/plain"}), 415)

    body = {"name": "kind", "from_tags": ["cat", "dog"], "test_fraction": 0.25, "seed": 3}
    done = _job(client, "POST", "/api/v1/heads", json=body)
    assert done["kind"] == "head-train" and done["state"] == "succeeded", done
    assert done["params"]["from_tags"] == ["cat", "dog"] and done["params"]["seed"] == 3
    _error(client.post("/api/v1/heads", json=body), 409, "replace")

    head = client.get("/api/v1/heads/kind").json()
    assert set(head) == HEAD_KEYS
    assert (head["name"], head["space"], head["source"]) == ("kind", "cls", "tags")
    assert head["source_spec"] == {"tags": ["cat", "dog"], "folder": None}
    assert head["classes"] == ["cat", "dog"] and head["model_matches"] and head["dim"] > 0
    report = head["report"]
    assert (report["train_count"], report["test_count"]) == (12, 4)
    assert report["examples"] == {"cat": PER_CLASS, "dog": PER_CLASS}
    assert [c["name"] for c in report["classes"]] == ["cat", "dog"]
    assert sum(map(sum, report["confusion"])) == 4 and len(report["confusion"]) == 2
    assert all(c["support"] == 2 for c in report["classes"])
    assert report["accuracy"] == 1.0  # red against blue: the tiny model tells them apart
    assert head["applied_at"] is None and head["labelled"] == 0 and head["corrections"] == 0
    assert client.get("/api/v1/heads").json()["heads"] == [head]
    _error(client.get("/api/v1/heads/nope"), 404, "nope")

    # Apply: every photo with a vector gets a label.
    done = _job(client, "POST", "/api/v1/heads/kind/apply")
    assert done["kind"] == "head-apply" and done["state"] == "succeeded", done
    head = client.get("/api/v1/heads/kind").json()
    assert head["applied_at"] and head["labelled"] == 2 * PER_CLASS + 2
    counts = head["label_counts"]
    assert set(counts) <= {"cat", "dog"} and sum(counts.values()) == head["labelled"]
    assert counts["cat"] >= PER_CLASS and counts["dog"] >= PER_CLASS
    _error(client.post("/api/v1/heads/nope/apply"), 404, "nope")

    # The uncertain photos: smallest margin first, each with its thumbnail and runner-up.
    page = client.get("/api/v1/heads/kind/labels", params={"limit": 5})
    assert page.status_code == 200, page.text
    listing = page.json()
    assert (listing["head"], listing["total"], listing["limit"], listing["offset"]) == (
        "kind",
        head["labelled"],
        5,
        0,
    )
    items = listing["items"]
    assert len(items) == 5 and all(set(i) == ITEM_KEYS for i in items)
    margins = [i["margin"] for i in items]
    assert margins == sorted(margins)
    for item in items:
        assert item["thumbnail_url"] == f"/api/v1/images/{item['image_id']}/thumbnail"
        assert item["source"] == "predicted" and item["path"].startswith(
            str(client.app.state["lib"])
        )
        assert {item["label"], item["runner_up"]} == {"cat", "dog"}
        assert 0.5 <= item["confidence"] <= 1
    # The two grey photos are the least sure of all.
    assert {Path(i["path"]).parent.name for i in items[:2]} == {"misc"}
    confident = client.get("/api/v1/heads/kind/labels", params={"order": "confident"}).json()
    assert [i["margin"] for i in confident["items"]] == sorted(
        (i["margin"] for i in confident["items"]), reverse=True
    )
    rest = client.get("/api/v1/heads/kind/labels", params={"limit": 5, "offset": 5}).json()
    assert not {i["image_id"] for i in rest["items"]} & {i["image_id"] for i in items}
    cats = client.get("/api/v1/heads/kind/labels", params={"label": "cat", "limit": 100}).json()
    assert cats["total"] == counts["cat"] and {i["label"] for i in cats["items"]} == {"cat"}
    recent = client.get("/api/v1/heads/kind/labels", params={"order": "recent"})
    assert recent.status_code == 200 and recent.json()["total"] == head["labelled"]
    for params, word in (
        ({"order": "random"}, "order"),
        ({"source": "guessed"}, "source"),
        ({"limit": 0}, "limit"),
        ({"offset": -1}, "offset"),
    ):
        _error(client.get("/api/v1/heads/kind/labels", params=params), 400, word)
    _error(client.get("/api/v1/heads/nope/labels"), 404, "nope")

    # Correct the least certain photo by hand, in any case: kept through a new apply.
    grey = items[0]
    wrong = "dog" if grey["label"] == "cat" else "cat"
    url = f"/api/v1/heads/kind/labels/{grey['image_id']}"
    fixed = client.put(url, json={"label": wrong.upper()})
    assert fixed.status_code == 200, fixed.text
    assert fixed.json() == {
        **grey, "label": wrong, "source": "corrected", "confidence": 1.0,
        "margin": fixed.json()["margin"], "runner_up": None,
    }  # fmt: skip
    _error(client.put(url, json={"label": "horse"}), 400, "horse")
    _error(client.put(url, json={"label": ""}), 400, "label")
    _error(client.put(url, json={"name": "cat"}), 400)
    _error(client.put("/api/v1/heads/kind/labels/999999", json={"label": "cat"}), 404)
    _error(client.put("/api/v1/heads/nope/labels/1", json={"label": "cat"}), 404, "nope")
    corrected = client.get("/api/v1/heads/kind/labels", params={"source": "corrected"}).json()
    assert [i["image_id"] for i in corrected["items"]] == [grey["image_id"]]
    assert client.get("/api/v1/heads/kind").json()["corrections"] == 1
    assert _job(client, "POST", "/api/v1/heads/kind/apply")["state"] == "succeeded"
    kept = client.get("/api/v1/heads/kind/labels", params={"source": "corrected"}).json()
    assert [(i["image_id"], i["label"]) for i in kept["items"]] == [(grey["image_id"], wrong)]

    # head_label filters the image list, facets, ids, similar search and tagging.
    dogs = _ids(client, head_label="kind:dog")
    assert len(dogs) == client.get("/api/v1/heads/kind").json()["label_counts"]["dog"]
    assert grey["image_id"] in dogs if wrong == "dog" else grey["image_id"] not in dogs
    assert _ids(client, head_label="kind:DOG") == dogs  # the label in any case
    assert _ids(client, head_label=["kind:dog", "kind:cat"]) == set()  # every one must hold
    assert _ids(client, head_label="kind:dog", tag="dog") == dogs & _ids(client, tag="dog")
    facets = client.get("/api/v1/facets", params={"head_label": "kind:dog"}).json()
    assert facets["total"] == len(dogs)
    assert (
        set(client.get("/api/v1/image-ids", params={"head_label": "kind:dog"}).json()["ids"])
        == dogs
    )
    seed = next(iter(dogs))
    similar = client.post(
        "/api/v1/similar", params={"head_label": "kind:cat", "k": 50}, json={"image_id": seed}
    )
    assert similar.status_code == 200, similar.text
    hits = {h["image_id"] for h in similar.json()["hits"]}
    assert hits and not hits & dogs
    near = client.get(f"/api/v1/images/{seed}/similar", params={"head_label": "kind:dog", "k": 50})
    assert {h["image_id"] for h in near.json()["hits"]} == dogs - {seed}
    tagged = client.post(
        "/api/v1/tags/checked/images", json={"filter": {"head_label": ["kind:dog"]}}
    )
    assert tagged.status_code == 200 and tagged.json()["added"] == len(dogs), tagged.text
    for bad in ("kinddog", "kind:", ":dog"):
        _error(
            client.get("/api/v1/images", params={"head_label": bad}),
            400,
            "head_label",
            "HEAD:LABEL",
        )
        _error(client.get("/api/v1/facets", params={"head_label": bad}), 400, "head_label")
        _error(
            client.post("/api/v1/similar", params={"head_label": bad}, json={"image_id": seed}),
            400,
            "head_label",
        )
        _error(
            client.post("/api/v1/tags/x/images", json={"filter": {"head_label": [bad]}}),
            400,
            "filter.head_label",
        )

    # Curation: a dataset's instance candidates carry the head label.
    made = client.post(
        "/api/v1/datasets",
        json={"name": "dogs", "prompt": "a photo of sks dog", "seeds": [seed], "k": 50,
              "dedup": None, "head_labels": ["kind:dog"]},
    )  # fmt: skip
    assert made.status_code == 201, made.text
    instances = {i["image_id"] for i in made.json()["items"] if i["role"] == "instance"}
    assert seed in instances and instances <= dogs
    _error(
        client.post(
            "/api/v1/datasets",
            json={"name": "x", "prompt": "p", "seeds": [seed], "head_labels": ["kinddog"]},
        ),
        400,
        "head_labels",
    )

    # Taking the correction back: the head predicts the photo again at once, as it did
    # before the correction.
    undone = client.delete(url)
    assert undone.status_code == 200, undone.text
    assert undone.json() == {**grey, "runner_up": None}
    assert client.get("/api/v1/heads/kind").json()["corrections"] == 0
    assert _job(client, "POST", "/api/v1/heads/kind/apply")["state"] == "succeeded"
    again = client.get("/api/v1/heads/kind/labels", params={"limit": 1}).json()["items"][0]
    assert again["source"] == "predicted" and again["label"] == grey["label"]
    _error(client.delete("/api/v1/heads/nope/labels/1"), 404, "nope")

    # Retrain in place, then delete: the labels go with the head.
    done = _job(client, "POST", "/api/v1/heads", json={**body, "replace": True})
    assert done["state"] == "succeeded", done
    assert client.delete("/api/v1/heads/kind").status_code == 204
    _error(client.delete("/api/v1/heads/kind"), 404, "kind")
    _error(client.get("/api/v1/heads/kind/labels"), 404)
    assert client.get("/api/v1/heads").json() == {"heads": []}


def test_train_from_folder(client: Client) -> None:
    lib: Path = client.app.state["lib"]
    done = _job(
        client, "POST", "/api/v1/heads", json={"name": "folders", "from_folder": str(lib / "kinds")}
    )
    assert done["state"] == "succeeded", done
    head = client.get("/api/v1/heads/folders").json()
    assert head["source"] == "folders" and head["classes"] == ["cats", "dogs"]
    assert head["source_spec"] == {"tags": None, "folder": str(lib / "kinds")}
    # A folder whose subfolders hold too few photos fails the job with the reason; one
    # outside every library (or missing) is refused before a job is queued.
    failed = _job(client, "POST", "/api/v1/heads", json={"name": "tiny", "from_folder": str(lib)})
    assert failed["state"] == "failed" and "at least 5 per class" in failed["error"], failed
    outside = str(lib.parent.parent)
    refused = client.post("/api/v1/heads", json={"name": "out", "from_folder": outside})
    _error(refused, 400, "not inside an indexed library")
    missing = client.post("/api/v1/heads", json={"name": "out", "from_folder": str(lib / "nope")})
    assert missing.status_code == 400, missing.text
