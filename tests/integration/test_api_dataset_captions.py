"""Dataset captions over HTTP: one set by hand (``PATCH .../items/{image_id}``), trigger
and class words (``PATCH /api/v1/datasets/{id}``), find/replace, and the bucket export
with kohya's folder layout and the bucket histogram."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from PIL import Image as PILImage

from tests.helpers import index_folder, wait_for_job
from tests.photos import make_photo
from vitdex.api import create_app
from vitdex.training.buckets import bucket_sizes, default_step, histogram
from vitdex.training.kohya import read_kohya_layout

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

    # The export does not turn default captions into hand ones.
    assert item_of(client, second["image_id"])["caption_source"] == "default"
    assert after["caption_source"] == "item"

    # null goes back to the prompt.
    reset = client.patch(path, json={"caption": None})
    assert reset.status_code == 200
    assert reset.json()["caption"] == "a photo of sks dog"
    assert reset.json()["caption_source"] == "default"


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
    assert item_of(client, image_id)["caption_source"] == "default"


# --------------------------------------------------------------------------- words


@pytest.fixture
def mixed(
    vitdex_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Client]:
    """Photos of several shapes (landscape, portrait, wide, square), none curated yet."""
    lib = tmp_path / "lib"
    sizes = [(96, 72), (72, 96), (128, 64), (80, 80), (96, 72), (64, 128), (100, 75)] * 2
    for i, size in enumerate(sizes):
        make_photo(lib / f"m{i:02d}.jpg", size=size, seed=10 + i)
    index_folder(lib)
    monkeypatch.setenv("VITDEX_ALLOWED_ROOTS", str(tmp_path / "allowed"))
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


def test_trigger_and_class_words_make_the_prompts_and_follow_changes(mixed: Client) -> None:
    made = mixed.post(
        "/api/v1/datasets",
        json={
            "name": "rex",
            "seeds": [1],
            "k": 3,
            "trigger_word": " sks ",
            "class_word": "dog",
            "class_count": 0,
        },
    )
    assert made.status_code == 201, made.text
    dataset = made.json()["dataset"]
    assert (dataset["trigger_word"], dataset["class_word"]) == ("sks", "dog")
    assert dataset["prompt"] == "a photo of sks dog"
    assert dataset["class_prompt"] == "a photo of a dog"
    assert dataset["crop_mode"] == "square"
    items = made.json()["items"]
    assert {(i["caption"], i["caption_source"]) for i in items} == {
        ("a photo of sks dog", "default")
    }

    # A new trigger word renames the subject in the derived prompt and default captions.
    changed = mixed.patch(
        "/api/v1/datasets/1", json={"trigger_word": "ohwx", "crop_mode": "buckets"}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["prompt"] == "a photo of ohwx dog"
    assert changed.json()["crop_mode"] == "buckets"
    listed = mixed.get("/api/v1/datasets/1/captions").json()
    assert {c["caption"] for c in listed["captions"]} == {"a photo of ohwx dog"}
    assert listed["defaults"] == {"instance": "a photo of ohwx dog", "class": "a photo of a dog"}
    # A prompt typed by hand stays when the words change again.
    mixed.patch("/api/v1/datasets/1", json={"prompt": "ohwx, a dog"})
    again = mixed.patch("/api/v1/datasets/1", json={"class_word": "corgi"}).json()
    assert again["prompt"] == "ohwx, a dog" and again["class_prompt"] == "a photo of a corgi"
    cleared = mixed.patch("/api/v1/datasets/1", json={"trigger_word": ""}).json()
    assert cleared["trigger_word"] is None and cleared["prompt"] == "ohwx, a dog"

    cases: list[tuple[str, Any, int, str]] = [
        ("/api/v1/datasets/1", {"crop_mode": "circle"}, 400, "crop_mode"),
        ("/api/v1/datasets/1", {"trigger_word": "two\nlines"}, 400, "one line"),
        ("/api/v1/datasets/1", {"class_word": "x" * 65}, 400, "at most 64"),
        ("/api/v1/datasets/1", {"prompt": "   "}, 400, "needs a prompt"),
        ("/api/v1/datasets/1", {}, 400, "nothing to change"),
        ("/api/v1/datasets/1", {"trigger_word": 5}, 400, "trigger_word"),
        ("/api/v1/datasets/9", {"trigger_word": "x"}, 404, "dataset"),
    ]
    for url, body, status, words in cases:
        response = mixed.patch(url, json=body)
        assert response.status_code == status, (body, response.text)
        assert words in response.text, response.text
    no_prompt = mixed.post("/api/v1/datasets", json={"name": "nope", "seeds": [1]})
    assert no_prompt.status_code == 400 and "trigger word" in no_prompt.text
    bad_mode = mixed.post(
        "/api/v1/datasets", json={"name": "nope", "seeds": [1], "prompt": "p", "crop_mode": "x"}
    )
    assert bad_mode.status_code == 400, bad_mode.text


def test_find_and_replace_in_captions(client: Client) -> None:
    items = [i for i in client.get("/api/v1/datasets/1").json()["items"]]
    first = items[0]["image_id"]
    client.patch(f"/api/v1/datasets/1/items/{first}", json={"caption": "sks dog on a dog bed"})
    url = "/api/v1/datasets/1/captions/replace"

    preview = client.post(url, json={"find": "dog", "replace": "puppy", "dry_run": True})
    assert preview.status_code == 200, preview.text
    body = preview.json()
    assert body["dry_run"] is True and body["changed"] == len(items) == body["scanned"]
    own = next(e for e in body["examples"] if e["image_id"] == first)
    assert own["after"] == "sks puppy on a puppy bed"
    # A dry run writes nothing.
    assert client.get("/api/v1/datasets/1/captions").json()["captions"][1]["caption"] == (
        "a photo of sks dog"
    )

    done = client.post(url, json={"find": "dog", "replace": "puppy"}).json()
    assert done["changed"] == len(items) and done["dry_run"] is False
    captions = client.get("/api/v1/datasets/1/captions").json()["captions"]
    by_id = {c["image_id"]: c for c in captions}
    assert by_id[first]["caption"] == "sks puppy on a puppy bed"
    others = [c for c in captions if c["image_id"] != first]
    assert {(c["caption"], c["caption_source"]) for c in others} == {
        ("a photo of sks puppy", "item")
    }

    # Back again with a regex: captions equal to the prompt follow it again (no own caption).
    back = client.post(url, json={"find": r"\bpupp(y)\b", "replace": "dog", "regex": True})
    assert back.status_code == 200 and back.json()["changed"] == len(items)
    captions = client.get("/api/v1/datasets/1/captions").json()["captions"]
    assert {c["caption_source"] for c in captions if c["image_id"] != first} == {"default"}
    assert next(c for c in captions if c["image_id"] == first)["caption"] == (
        "sks dog on a dog bed"
    )
    # Nothing to find: nothing changes.
    none = client.post(url, json={"find": "zebra", "replace": "x"}).json()
    assert (none["changed"], none["examples"]) == (0, [])
    # Class items only: this dataset has none.
    assert client.post(url, json={"find": "dog", "role": "class"}).json()["scanned"] == 0

    cases: list[tuple[Any, int, str]] = [
        ({"find": "", "replace": "x"}, 400, "must not be empty"),
        ({"find": "(", "replace": "x", "regex": True}, 400, "invalid regular expression"),
        ({"find": "dog", "replace": r"\3", "regex": True}, 400, "invalid group reference"),
        ({"find": "dog", "replace": "a\nb"}, 400, "one line"),
        ({"find": "dog", "replace": r"\n", "regex": True}, 400, "line break"),
        ({"find": r"^.*$", "replace": "", "regex": True}, 400, "uncaptioned"),
        ({"find": "dog", "role": "other"}, 400, "role"),
        ({"replace": "x"}, 400, "find"),
        ({"find": 3}, 400, "find"),
    ]
    for body, status, words in cases:
        response = client.post(url, json=body)
        assert response.status_code == status, (body, response.text)
        assert words in response.text, response.text
    missing = client.post("/api/v1/datasets/8/captions/replace", json={"find": "a"})
    assert missing.status_code == 404
    # The refused replacements changed nothing.
    after = client.get("/api/v1/datasets/1/captions").json()["captions"]
    assert after == captions


def test_bucket_export_writes_kohya_layout_and_histogram(mixed: Client) -> None:
    made = mixed.post(
        "/api/v1/datasets",
        json={
            "name": "Rex: the dog/cat",
            "seeds": [1, 2, 3],
            "k": 5,
            "dedup": None,
            "trigger_word": "sks",
            "class_word": "dog",
            "class_count": 2,
            "crop_mode": "buckets",
        },
    )
    assert made.status_code == 201, made.text
    view = made.json()
    included = [i for i in view["items"] if i["included"] and i["role"] == "instance"]
    assert sum(b["count"] for b in view["buckets"]["bins"]) == len(included)
    # Before an export the histogram counts each photo at its own size.
    expected = histogram([(i["width"], i["height"]) for i in included], 512)
    assert view["buckets"] == {"resolution": 512, "bins": expected}
    assert len(expected) > 1  # the photos have several shapes
    at_256 = mixed.get("/api/v1/datasets/1", params={"resolution": 256}).json()["buckets"]
    assert at_256["bins"] == histogram([(i["width"], i["height"]) for i in included], 256)
    for bad in ("100", "4096", "x"):
        response = mixed.get("/api/v1/datasets/1", params={"resolution": bad})
        assert response.status_code == 400, response.text

    mixed.patch(
        f"/api/v1/datasets/1/items/{included[0]['image_id']}", json={"caption": "sks, close"}
    )
    job = mixed.post("/api/v1/datasets/1/export", json={"resolution": 64}).json()["job"]
    done = wait_for_job(mixed, job["id"])
    assert done["state"] == "succeeded", done
    counts = done["counts"]
    out = Path(counts["path"])
    assert counts["crop_mode"] == "buckets" and "kohya" in counts["kohya"]["note"]

    config = tomllib.loads((out / "dataset.toml").read_text())
    general = config["general"]
    assert general["enable_bucket"] is True and general["bucket_no_upscale"] is False
    sides = [side for bucket in bucket_sizes(64) for side in bucket]
    assert (general["min_bucket_reso"], general["max_bucket_reso"]) == (min(sides), max(sides))
    assert general["bucket_reso_steps"] == default_step(64)

    after = mixed.get("/api/v1/datasets/1").json()
    items = {(i["role"], i["image_id"]): i for i in after["items"] if i["included"]}
    # Each PNG is at its item's bucket, a bucket of the base resolution.
    for item in items.values():
        file = out / item["crop"]["file"]
        with PILImage.open(file) as png:
            assert list(png.size) == item["crop"]["bucket"]
        assert tuple(item["crop"]["bucket"]) in bucket_sizes(64)
    # After the export the histogram counts each crop (the box training reads).
    boxes = [i["crop"]["box"] for i in after["items"] if i["included"] and i["role"] == "instance"]
    crops = [(right - left, bottom - top) for left, top, right, bottom in boxes]
    assert after["buckets"]["bins"] == histogram(crops, 512)

    # kohya's layout holds the same files and captions as the export's own folders.
    subsets = read_kohya_layout(out / "kohya")
    assert [(s.repeats, s.name, s.is_reg) for s in subsets] == [
        (counts["num_repeats"], "sks dog", False),
        (counts["class_repeats"], "dog", True),
    ]
    for subset, role in zip(subsets, ("instance", "class"), strict=True):
        by_file = {Path(i["crop"]["file"]).name: i for (r, _), i in items.items() if r == role}
        assert sorted(p.name for p, _ in subset.images) == sorted(by_file)
        for path, caption in subset.images:
            assert caption == by_file[path.name]["caption"]
            assert path.samefile(out / role / path.name)
    assert "sks, close" in [caption for _, caption in subsets[0].images]

    # Exporting again replaces both layouts; a renamed subject leaves no stale folder.
    mixed.patch("/api/v1/datasets/1", json={"trigger_word": "", "class_word": ""})
    job = mixed.post("/api/v1/datasets/1/export", json={"resolution": 64}).json()["job"]
    assert wait_for_job(mixed, job["id"])["state"] == "succeeded"
    names = [s.name for s in read_kohya_layout(out / "kohya")]
    assert names == ["Rex the dog cat", "class"]
