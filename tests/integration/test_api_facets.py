"""``/api/v1/facets``, ``/image-ids``, ``/images/{id}/adjacent`` and ``/spaces`` against a
brute-force count over the catalog's own rows (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from tests.helpers import index_folder
from tests.photos import make_photo
from vitdex.api import create_app
from vitdex.config import load_settings
from vitdex.db import Image, make_engine, repo, session_factory

Client = TestClient[Litestar]
CAMERAS = [("Canon", "EOS R5"), ("Apple", "iPhone 15"), ("Sony", "A7 IV"), ("Canon", "EOS R6")]


@pytest.fixture
def client(vitdex_env: dict[str, str], tmp_path: Path) -> Iterator[Client]:
    """Two libraries: 30 photos with cameras and dates (some without), and two broken files."""
    first, second = tmp_path / "first", tmp_path / "second"
    for i in range(30):
        lib = first if i % 3 else second
        make_photo(
            lib / ("a" if i % 2 else "b") / f"p{i:02d}.jpg",
            size=(64, 48),
            seed=i,
            taken_at=None if i % 7 == 0 else datetime(2021 + i % 3, 1 + i % 12, 1 + i % 28, 9),
            # One phone wrote its make in capitals: two stored spellings, one filter value.
            camera=("APPLE", "iPhone 15") if i == 25 else CAMERAS[i % 4] if i % 5 else None,
        )
    for name in ("broken.jpg", "empty.png"):
        (first / name).write_bytes(b"not an image at all" if name == "broken.jpg" else b"")
    index_folder(first)
    index_folder(second)
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


def _rows() -> tuple[list[Image], dict[int, list[str]]]:
    settings = load_settings()
    engine = make_engine(settings.storage.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            images = list(session.query(Image).all())
            labels = repo.labels_of(session, [img.id for img in images])
            for img in images:
                session.expunge(img)
    finally:
        engine.dispose()
    return images, {i: [label for label, _ in ls] for i, ls in labels.items()}


def _counts(values: list[Any]) -> dict[str, int]:
    return {str(v): n for v, n in Counter(v for v in values if v is not None).items()}


def _facets(client: Client, **params: Any) -> dict[str, dict[str, int]]:
    answer = client.get("/api/v1/facets", params={"labels_limit": 1000, **params})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    out = {
        name: {v["value"]: v["count"] for v in body[name]}
        for name in ("libraries", "statuses", "camera_makes", "camera_models", "labels", "years")
    }
    out["total"] = {"": body["total"]}
    return out


def test_facet_counts_match_a_brute_force_count(client: Client) -> None:
    images, labels = _rows()
    assert {img.status for img in images} >= {"indexed", "failed"}
    make = next(img.camera_make for img in images if img.camera_make == "Canon")
    label = Counter(lb for ls in labels.values() for lb in ls).most_common(1)[0][0]
    library = images[0].library_id

    pred = Callable[[Image], bool]
    conditions: dict[str, tuple[str, pred]] = {
        "camera_make": ("camera_make", lambda i: (i.camera_make or "").lower() == "canon"),
        "camera_model": ("camera_model", lambda i: i.camera_model == "iPhone 15"),
        "label": ("label", lambda i: label in labels.get(i.id, [])),
        "library_id": ("libraries", lambda i: i.library_id == library),
        "status": ("statuses", lambda i: i.status == "indexed"),
        "taken_after": (
            "years",
            lambda i: i.taken_at is not None and i.taken_at >= datetime(2022, 1, 1),
        ),
        "taken_before": (
            "years",
            lambda i: i.taken_at is not None and i.taken_at < datetime(2023, 1, 1),
        ),
    }
    values = {
        "camera_make": make.lower(),
        "camera_model": "iPhone 15",
        "label": label,
        "library_id": library,
        "status": "indexed",
        "taken_after": "2022-01-01",
        "taken_before": "2023-01-01",
    }
    combos: list[tuple[str, ...]] = [
        (),
        ("camera_make",),
        ("camera_make", "label"),
        ("library_id", "status"),
        ("taken_after", "taken_before", "camera_make"),
        ("camera_model", "library_id", "label", "status"),
    ]
    for combo in combos:
        params = {name: values[name] for name in combo}
        got = _facets(client, **params)

        def matching(but: str | None, combo: tuple[str, ...] = combo) -> list[Image]:
            keep = [conditions[n][1] for n in combo if conditions[n][0] != but]
            return [img for img in images if all(c(img) for c in keep)]

        expected = {
            "total": {"": len(matching(None))},
            "libraries": _counts([i.library_id for i in matching("libraries")]),
            "statuses": _counts([i.status for i in matching("statuses")]),
            "camera_makes": _counts([i.camera_make for i in matching("camera_make")]),
            "camera_models": _counts([i.camera_model for i in matching("camera_model")]),
            "labels": _counts([lb for i in matching("label") for lb in labels.get(i.id, [])]),
            "years": _counts([i.taken_at.year if i.taken_at else None for i in matching("years")]),
        }
        assert got == expected, combo
    # The capitals spelling is its own value, and "apple" filters both spellings.
    assert _facets(client)["camera_makes"]["APPLE"] == 1
    assert _facets(client, camera_make="apple")["total"][""] == sum(
        1 for i in images if (i.camera_make or "").lower() == "apple"
    )


def test_labels_limit_keeps_the_most_common(client: Client) -> None:
    _, labels = _rows()
    counts = Counter(lb for ls in labels.values() for lb in ls)
    body = client.get("/api/v1/facets", params={"labels_limit": 2}).json()
    assert [v["count"] for v in body["labels"]] == [n for _, n in counts.most_common(2)]


def test_image_ids_are_in_library_order_and_capped(client: Client) -> None:
    images, _ = _rows()
    listed = client.get("/api/v1/images", params={"limit": 1000}).json()
    everything = client.get("/api/v1/image-ids").json()
    assert everything["ids"] == [img["id"] for img in listed["images"]]
    assert everything["total"] == len(images) and not everything["truncated"]
    capped = client.get("/api/v1/image-ids", params={"limit": 5, "camera_make": "canon"}).json()
    canon = [i.id for i in images if (i.camera_make or "").lower() == "canon"]
    assert capped["total"] == len(canon) > 5 and capped["truncated"]
    assert set(capped["ids"]) <= set(canon) and len(capped["ids"]) == 5
    failed = client.get("/api/v1/image-ids", params={"status": "failed"}).json()
    assert sorted(failed["ids"]) == sorted(i.id for i in images if i.status == "failed")


def test_adjacent_walks_the_grid_order(client: Client) -> None:
    params = {"camera_make": "canon"}
    order = client.get("/api/v1/image-ids", params=params).json()["ids"]
    assert len(order) > 3
    walked = [order[0]]
    while True:
        step = client.get(f"/api/v1/images/{walked[-1]}/adjacent", params=params).json()
        assert step["position"] == len(walked) and step["total"] == len(order)
        assert step["previous"] == (walked[-2] if len(walked) > 1 else None)
        if step["next"] is None:
            break
        walked.append(step["next"])
    assert walked == order
    # Undated photos come last: walking the whole catalog crosses from dated to undated.
    everything = client.get("/api/v1/image-ids").json()["ids"]
    last = client.get(f"/api/v1/images/{everything[-1]}/adjacent").json()
    assert last["next"] is None and last["previous"] == everything[-2]
    first = client.get(f"/api/v1/images/{everything[0]}/adjacent").json()
    assert first["previous"] is None and first["next"] == everything[1]
    # An image outside the filter has position 0.
    other = next(i for i in everything if i not in order)
    assert client.get(f"/api/v1/images/{other}/adjacent", params=params).json()["position"] == 0


def test_spaces_list_the_catalogs_spaces(client: Client) -> None:
    body = client.get("/api/v1/spaces").json()
    indexed = client.get("/api/v1/images", params={"status": "indexed", "limit": 1}).json()
    assert [s["name"] for s in body["spaces"]] == ["cls", "cls@2"]
    assert body["default"] == "cls"
    assert all(s["count"] == indexed["total"] and s["dim"] > 0 for s in body["spaces"])


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/facets", {"status": "bogus"}),
        ("/api/v1/facets", {"labels_limit": 0}),
        ("/api/v1/facets", {"taken_after": "yesterday"}),
        ("/api/v1/facets", {"taken_after": "2024-01-01", "taken_before": "2023-01-01"}),
        ("/api/v1/facets", {"library_id": "x"}),
        ("/api/v1/image-ids", {"limit": 100_001}),
        ("/api/v1/image-ids", {"limit": 0}),
        ("/api/v1/image-ids", {"camera_make": "a\x00b"}),
        ("/api/v1/images/1/adjacent", {"status": "nope"}),
    ],
)
def test_bad_parameters_are_400(client: Client, path: str, params: dict[str, Any]) -> None:
    answer = client.get(path, params=params)
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"]


def test_unknown_image_is_404(client: Client) -> None:
    assert client.get("/api/v1/images/999999/adjacent").status_code == 404
