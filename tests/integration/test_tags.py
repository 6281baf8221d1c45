"""Tags in the catalog (SQLite and PostgreSQL): bulk tagging by ids and by filter,
idempotence, rename and merge, delete, counts, and the ``/api/v1/tags`` routes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from vitdex.api import create_app
from vitdex.db import Image, ensure_schema, make_engine, repo, session_factory
from vitdex.db.models import Library, utcnow
from vitdex.db.review_models import ImageTag, Tag
from vitdex.db.tags import TagCount, TagStore, ids_matching
from vitdex.errors import ConfigError, NotFoundError
from vitdex.filters import SearchFilter

Client = TestClient[Litestar]


def _fill(sessions: sessionmaker[Session], n: int) -> list[int]:
    """``n`` image rows in two folders (/lib/a holds the even ones), no files needed."""
    with sessions.begin() as session:
        lib = Library(root="/lib")
        session.add(lib)
        session.flush()
        now = utcnow()
        rows = [
            {
                "library_id": lib.id,
                "path": f"/lib/{'a' if i % 2 == 0 else 'b'}/p{i:06d}.jpg",
                "size": 1,
                "mtime_ns": 1,
                "status": "indexed",
                "camera_make": "Canon" if i % 3 == 0 else "Sony",
                "created_at": now,
                "updated_at": now,
            }
            for i in range(n)
        ]
        session.execute(insert(Image), rows)
        return sorted(session.scalars(select(Image.id)))


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    ensure_schema(engine)
    yield session_factory(engine)
    engine.dispose()


def _pairs(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(ImageTag)) or 0)


def test_bulk_tagging_is_idempotent(sessions: sessionmaker[Session]) -> None:
    ids = _fill(sessions, 12_000)  # more than one chunk of ids (5,000)
    store = TagStore(sessions)
    tag, added = store.add("Holiday", ids[:11_000])
    assert (tag.name, tag.count, added) == ("Holiday", 11_000, 11_000)
    # Again, with another spelling and overlapping ids: only the new ones count.
    tag, added = store.add(" holiday ", ids[10_000:])
    assert (tag.name, tag.count, added) == ("Holiday", 12_000, 1_000)
    tag, added = store.add("HOLIDAY", ids)
    assert (tag.count, added) == (12_000, 0)
    assert _pairs(sessions) == 12_000

    tag, removed = store.remove("holiday", ids[:6_000] + ids[:10])  # repeats count once
    assert (tag.count, removed) == (6_000, 6_000)
    tag, removed = store.remove("holiday", ids[:6_000])
    assert (tag.count, removed) == (6_000, 0)
    assert store.all() == [TagCount(tag.id, "Holiday", 6_000)]
    assert store.of_image(ids[0]) == [] and store.of_image(ids[-1]) == ["Holiday"]


def test_tagging_by_filter(sessions: sessionmaker[Session]) -> None:
    ids = _fill(sessions, 30)
    store = TagStore(sessions)
    folder_a = SearchFilter(path_prefix="/lib/a")
    tag, added = store.add("a", flt=folder_a)
    assert (tag.count, added) == (15, 15)
    assert store.add("a", flt=folder_a)[1] == 0
    # Filters combine with tags: Canon photos in folder a, by the tag just given.
    canon_a = SearchFilter(camera_make="canon", tags=("A",))
    with sessions() as session:
        expected = ids_matching(session, canon_a)
    assert expected == [i for i in ids if (i - ids[0]) % 6 == 0]
    tag, added = store.add("canon a", flt=canon_a)
    assert (tag.count, added) == (5, 5)
    tag, removed = store.remove("a", flt=SearchFilter(camera_make="Sony"))
    assert (tag.count, removed) == (5, 10)
    with sessions() as session:
        assert ids_matching(session, SearchFilter(tags=("a", "canon a"))) == expected


def test_unknown_ids_and_bad_names_change_nothing(sessions: sessionmaker[Session]) -> None:
    ids = _fill(sessions, 5)
    store = TagStore(sessions)
    with pytest.raises(NotFoundError, match=r"no images with id 9999, 10000$"):
        store.add("x", [ids[0], 9999, 10000])
    with pytest.raises(NotFoundError, match=r"no image with id 0$"):
        store.add("x", [0])
    many = list(range(100_000, 100_012))
    with pytest.raises(NotFoundError, match=r"and 2 more$"):
        store.add("x", many)
    with pytest.raises(ConfigError, match="must not be empty"):
        store.add("  ", ids)
    with pytest.raises(NotFoundError, match="no tag named 'x'"):
        store.remove("x", ids)
    assert store.all() == [] and _pairs(sessions) == 0


def test_rename_merge_and_delete(sessions: sessionmaker[Session]) -> None:
    ids = _fill(sessions, 10)
    store = TagStore(sessions)
    store.add("dog", ids[:6])
    store.add("Rex", ids[4:8])
    # Another spelling of its own name: a rename, not a merge.
    tag, merged = store.rename("DOG", "Dog")
    assert (tag.name, tag.count, merged) == ("Dog", 6, False)
    # Onto an existing tag: the photos move (ids 4, 5 carry both), the old tag goes.
    tag, merged = store.rename("rex", "dog")
    assert (tag.name, tag.count, merged) == ("Dog", 8, True)
    assert [t.name for t in store.all()] == ["Dog"]
    assert _pairs(sessions) == 8
    with pytest.raises(NotFoundError):
        store.rename("rex", "anything")
    tag, merged = store.rename("dog", "Good Dogs")
    assert (tag.name, merged) == ("Good Dogs", False)

    # Deleting a tag takes it off every photo; deleting a photo takes its tags along.
    store.add("cat", ids[:3])
    assert store.delete("good dogs") == 8
    assert [t.name for t in store.all()] == ["cat"] and _pairs(sessions) == 3
    with sessions.begin() as session:
        repo.delete_images(session, ids[:2])
    assert store.all()[0].count == 1 and _pairs(sessions) == 1
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Tag)) == 1


@pytest.fixture
def client(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Client, list[int]]]:
    monkeypatch.setenv("VITDEX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VITDEX_DATABASE_URL", database_url)
    engine = make_engine(database_url)
    ensure_schema(engine)
    ids = _fill(session_factory(engine), 8)
    engine.dispose()
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c, ids


def test_tag_routes(client: tuple[Client, list[int]]) -> None:
    c, ids = client
    added = c.post("/api/v1/tags/My%20Dog/images", json={"image_ids": ids[:3]})
    assert added.status_code == 200, added.text
    body = added.json()
    assert body["added"] == 3 and body["tag"]["name"] == "My Dog" and body["tag"]["count"] == 3
    assert c.post("/api/v1/tags/my%20dog/images", json={"image_ids": ids[:3]}).json()["added"] == 0
    by_filter = c.post("/api/v1/tags/a/images", json={"filter": {"folder": "/lib/a"}}).json()
    assert by_filter["added"] == 4 and by_filter["filter_notes"] == []
    assert c.get("/api/v1/tags/A").json() == by_filter["tag"]
    listed = c.get("/api/v1/tags").json()["tags"]
    assert [(t["name"], t["count"]) for t in listed] == [("a", 4), ("My Dog", 3)]

    # An image's JSON names its tags, in the list and alone.
    assert c.get(f"/api/v1/images/{ids[0]}").json()["tags"] == ["a", "My Dog"]
    page = c.get("/api/v1/images", params={"tag": ["MY DOG", "a"]}).json()
    assert page["total"] == 2 and all(i["tags"] == ["a", "My Dog"] for i in page["images"])
    facets = c.get("/api/v1/facets", params={"tag": "a"}).json()
    assert facets["total"] == 4
    # The tag facet leaves out the tag filter, like every facet its own.
    assert {v["value"]: v["count"] for v in facets["tags"]} == {"a": 4, "My Dog": 3}
    sony = c.get("/api/v1/facets", params={"camera_make": "sony"}).json()["tags"]
    assert {v["value"]: v["count"] for v in sony} == {"a": 2, "My Dog": 2}

    # Untag by DELETE with a body, or by POST .../remove.
    removed = c.request("DELETE", "/api/v1/tags/a/images", json={"image_ids": ids[:2]})
    assert removed.status_code == 200 and removed.json()["removed"] == 1, removed.text
    removed = c.post("/api/v1/tags/a/images/remove", json={"filter": {"folder": "/lib"}})
    assert removed.json()["removed"] == 3 and removed.json()["tag"]["count"] == 0
    # A filter value no photo has: nothing changes, and the answer says what was meant.
    missed = c.post("/api/v1/tags/a/images", json={"filter": {"tag": ["my dgo"]}}).json()
    assert missed["added"] == 0
    assert missed["filter_notes"][0]["close"] == ["My Dog"]

    renamed = c.patch("/api/v1/tags/a", json={"name": "my DOG"})
    assert renamed.status_code == 200 and renamed.json()["merged"] is True
    assert renamed.json()["tag"] == {"id": body["tag"]["id"], "name": "My Dog", "count": 3}
    assert c.delete("/api/v1/tags/My%20Dog").status_code == 204
    assert c.get("/api/v1/tags").json()["tags"] == []
    assert c.get(f"/api/v1/images/{ids[0]}").json()["tags"] == []


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "detail"),
    [
        ("POST", "/api/v1/tags/x/images", {"image_ids": [424242]}, 404, "no image with id 424242"),
        ("POST", "/api/v1/tags/x/images", {}, 400, "exactly one of image_ids and filter"),
        ("POST", "/api/v1/tags/x/images", {"image_ids": [], "filter": {}}, 400, "exactly one"),
        ("POST", "/api/v1/tags/x/images", {"image_ids": []}, 400, "must not be empty"),
        ("POST", "/api/v1/tags/x/images", {"image_ids": ["a"]}, 400, None),
        # A misspelt condition is refused by name: never "every photo".
        ("POST", "/api/v1/tags/x/images", {"filter": {"tags": ["held"]}}, 400, "unknown field"),
        ("POST", "/api/v1/tags/x/images", {"filter": {}}, 400, "no condition"),
        ("POST", "/api/v1/tags/%20/images", {"image_ids": [1]}, 400, "must not be empty"),
        ("POST", "/api/v1/tags/a%0Ab/images", {"image_ids": [1]}, 400, "control characters"),
        ("POST", f"/api/v1/tags/{'x' * 129}/images", {"image_ids": [1]}, 400, "at most 128"),
        ("DELETE", "/api/v1/tags/nope/images", {"image_ids": [1]}, 404, "no tag named 'nope'"),
        ("POST", "/api/v1/tags/nope/images/remove", {"image_ids": [1]}, 404, "no tag named"),
        ("PATCH", "/api/v1/tags/nope", {"name": "x"}, 404, "no tag named 'nope'"),
        ("PATCH", "/api/v1/tags/held", {"name": " "}, 400, "must not be empty"),
        ("PATCH", "/api/v1/tags/held", {}, 400, None),
        ("DELETE", "/api/v1/tags/nope", None, 404, "no tag named 'nope'"),
        ("GET", "/api/v1/tags/nope", None, 404, "no tag named 'nope'"),
    ],
)
def test_tag_route_errors(
    client: tuple[Client, list[int]],
    method: str,
    path: str,
    body: object,
    status: int,
    detail: str | None,
) -> None:
    c, ids = client
    assert c.post("/api/v1/tags/held/images", json={"image_ids": ids[:1]}).status_code == 200
    answer = c.request(method, path, json=body) if body is not None else c.request(method, path)
    assert answer.status_code == status, answer.text
    if detail is not None:
        assert detail in answer.json()["detail"]
    # Nothing changed.
    assert [(t["name"], t["count"]) for t in c.get("/api/v1/tags").json()["tags"]] == [("held", 1)]
