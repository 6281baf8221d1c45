"""Tag filters on both vector backends (FAISS, Qdrant local): similar search, browsing and
clustering restricted to tagged photos give what a brute force over those photos gives;
and ``vitdex tag`` on the command line, ``--like`` included."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from tests.helpers import as_json, index_folder, run_vitdex, wait_for_job
from tests.photos import make_photo
from vitdex.api import create_app
from vitdex.config import load_settings
from vitdex.db import make_engine, repo, session_factory
from vitdex.db.tags import TagStore
from vitdex.filters import SearchFilter
from vitdex.search.service import SearchService
from vitdex.vectors.factory import open_store

Client = TestClient[Litestar]
CAMERAS = [("Canon", "EOS R5"), ("Apple", "iPhone 15"), ("Sony", "A7 IV")]


def _library(root: Path, n: int = 24) -> Path:
    for i in range(n):
        make_photo(
            root / ("a" if i % 2 else "b") / f"p{i:02d}.jpg",
            size=(96, 72),
            seed=i,
            taken_at=datetime(2023, 1 + i % 12, 1 + i, 12),
            camera=CAMERAS[i % 3],
        )
    return root


@pytest.fixture(params=["faiss", "qdrant"])
def tagged(
    request: pytest.FixtureRequest,
    vitdex_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[SearchService, list[int]]]:
    """24 photos indexed on each backend; "Even" on every other one, "Quarter" on every
    fourth (tags live only in SQL, never in a store's payload)."""
    monkeypatch.setenv("VITDEX_VECTOR_BACKEND", request.param)
    index_folder(_library(tmp_path / "lib"))
    settings = load_settings()
    engine = make_engine(settings.storage.resolved_database_url)
    sessions = session_factory(engine)
    with sessions() as session:
        ids = repo.vector_image_ids(session, repo.get_space(session, "cls").id)
    TagStore(sessions).add("Even", ids[::2])
    TagStore(sessions).add("Quarter", ids[::4])
    yield SearchService(settings, sessions), ids
    engine.dispose()


def _truth(service: SearchService, query_id: int, allowed: list[int], k: int) -> list[int]:
    """Brute force: inner products against every allowed vector, best first."""
    with service.sessions() as session:
        space = repo.get_space(session, "cls")
    store = open_store(service.settings, "cls", space.dim)
    ids = np.asarray([i for i in allowed if i != query_id], np.int64)
    q = store.get(np.asarray([query_id]))[0]
    scores = store.get(ids) @ q
    order = np.argsort(-scores, kind="stable")[:k]
    store.close()
    return [int(ids[j]) for j in order]


def test_tag_filters_match_brute_force(tagged: tuple[SearchService, list[int]]) -> None:
    service, ids = tagged
    with service.sessions() as session:
        images = repo.get_images(session, ids)
    even, quarter = ids[::2], ids[::4]
    cases = {
        "one tag, any case": (SearchFilter(tags=("even",)), even),
        "every tag": (SearchFilter(tags=("EVEN", "quarter")), quarter),
        # A payload condition with a tag: Qdrant too resolves it in SQL then.
        "tag and camera": (
            SearchFilter(tags=("Even",), camera_make="canon"),
            [i for i in even if images[i].camera_make == "Canon"],
        ),
    }
    for query_id in (ids[0], ids[1]):  # one tagged query, one not
        for name, (flt, allowed) in cases.items():
            result = service.similar(ids=[query_id], k=5, filter=flt)[0]
            got = [hit.image_id for hit in result.hits]
            assert got == _truth(service, query_id, allowed, 5), name
            assert set(got) <= set(allowed), name
    # A tag no photo has: nothing, and the filter note says what was meant.
    assert service.similar(ids=[ids[0]], k=5, filter=SearchFilter(tags=("evn",)))[0].hits == []
    (miss,) = service.filter_misses(SearchFilter(tags=("evn",)))
    assert miss.close == ("Even",)


def test_tag_filters_over_http(tagged: tuple[SearchService, list[int]]) -> None:
    service, ids = tagged
    even = ids[::2]
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        # Similar search by id, GET and POST, with the tag as a query parameter.
        hits = c.get(f"/api/v1/images/{ids[1]}/similar", params={"tag": "even", "k": 5})
        assert hits.status_code == 200, hits.text
        got = [h["image_id"] for h in hits.json()["hits"]]
        assert got == _truth(service, ids[1], even, 5)
        posted = c.post(
            "/api/v1/similar", params={"tag": "EVEN", "k": 5}, json={"image_id": ids[1]}
        )
        assert [h["image_id"] for h in posted.json()["hits"]] == got

        # Browsing: only the tagged photos, each naming its tags.
        page = c.get("/api/v1/images", params={"tag": ["even", "quarter"], "limit": 100}).json()
        assert sorted(i["id"] for i in page["images"]) == ids[::4]
        assert all(i["tags"] == ["Even", "Quarter"] for i in page["images"])
        ids_only = c.get("/api/v1/image-ids", params={"tag": "Even"}).json()
        assert sorted(ids_only["ids"]) == even

        # An unknown tag: empty answers with a note naming the close tag.
        missed = c.get(f"/api/v1/images/{ids[1]}/similar", params={"tag": "evn"}).json()
        assert missed["hits"] == [] and missed["filter_notes"][0]["close"] == ["Even"]
        browse = c.get("/api/v1/images", params={"tag": "quartre"}).json()
        assert browse["total"] == 0
        assert browse["filter_notes"][0]["message"].startswith("no photo has tag 'quartre'")

        # Clustering only the tagged photos.
        started = c.post(
            "/api/v1/clusters", json={"space": "cls", "k": 2, "filter": {"tag": ["Even"]}}
        )
        assert started.status_code == 202, started.text
        done = wait_for_job(c, started.json()["job"]["id"])
        assert done["state"] == "succeeded", done
        run = c.get(
            f"/api/v1/clusters/{done['counts']['run_id']}", params={"members_limit": 100}
        ).json()
        assert run["n_images"] == len(even)
        members = {m["image_id"] for cl in run["clusters"] for m in cl["members"]}
        assert members == set(even)
        missed_job = c.post("/api/v1/clusters", json={"space": "cls", "filter": {"tag": ["evn"]}})
        failed = wait_for_job(c, missed_job.json()["job"]["id"])
        assert failed["state"] == "failed" and "no photo has tag 'evn'" in failed["error"]


def test_tag_command(vitdex_env: dict[str, str], tmp_path: Path) -> None:
    lib = _library(tmp_path / "lib", 12)
    index_folder(lib)
    settings = load_settings()
    engine = make_engine(settings.storage.resolved_database_url)
    store = TagStore(session_factory(engine))
    with store.sessions() as session:
        paths = {i: img.path for i, img in repo.get_images(session, range(1, 13)).items()}
    b_side = {i for i, path in paths.items() if "/b/" in path}

    # --like: the photo and its neighbours at least as similar as the fifth.
    hits = as_json(run_vitdex("similar", "--id", "1", "-k", "11", "--json"))[0]["hits"]
    near = {1} | {h["image_id"] for h in hits[:5]}
    like = ("tag", "add", "Near", "--like", "1", "--min-score", str(hits[4]["score"]))
    assert run_vitdex(*like).stdout.startswith("tagged 6 photos 'Near'; it is on 6 photos")
    assert run_vitdex(*like).stdout.startswith("tagged 0 photos 'Near'; it is on 6 photos")
    assert {i for i in paths if store.of_image(i) == ["Near"]} == near
    assert as_json(run_vitdex("tag", "show", "1", "--json")) == {"image_id": 1, "tags": ["Near"]}

    out = run_vitdex("tag", "add", "B side", "--all-matching", "--folder", str(lib / "b")).stdout
    assert out.startswith("tagged 6 photos 'B side'; it is on 6 photos"), out
    one = min(b_side)
    out = run_vitdex("tag", "remove", "b SIDE", "--id", str(one)).stdout
    assert out.startswith("untagged 1 photo 'B side'; it is on 5 photos"), out
    merged = near | (b_side - {one})
    out = run_vitdex("tag", "rename", "near", "b side").stdout
    assert out.startswith(f"'near' merged into 'B side', on {len(merged)} photos"), out
    listed = as_json(run_vitdex("tag", "list", "--json"))
    assert [(t["name"], t["count"]) for t in listed] == [("B side", len(merged))]
    assert {i for i in paths if store.of_image(i) == ["B side"]} == merged

    # Mistakes say what is wrong and change nothing.
    missed = run_vitdex("tag", "add", "x", "--all-matching", "--tag", "b sidd")
    assert "no photo has tag 'b sidd'; close values: B side" in missed.stderr
    assert "no image with id 999" in run_vitdex("tag", "add", "y", "--id", "999", code=2).stderr
    usage = run_vitdex("tag", "add", "y", "--id", "1", "--all-matching", code=2)
    assert "pick photos one way" in usage.stderr
    assert "must not contain" in run_vitdex("tag", "add", "a/b", "--id", "1", code=2).stderr
    out = run_vitdex("tag", "delete", "B side").stdout
    assert out.startswith(f"deleted tag 'B side'; it was on {len(merged)} photos"), out
    assert [t["name"] for t in as_json(run_vitdex("tag", "list", "--json"))] == ["x"]
    engine.dispose()
