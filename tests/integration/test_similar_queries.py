"""Similarity queries of several examples (liked and disliked) and with a score cut-off,
through the service, the CLI and ``POST /api/v1/similar``, against brute force over the
stored vectors, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from litestar.testing import TestClient

from tests.photos import make_photo
from vitdex.api import create_app
from vitdex.cli import cli
from vitdex.config import load_settings
from vitdex.db import ensure_schema, make_engine, repo, session_factory
from vitdex.db.tags import add_tag
from vitdex.indexer.embedder import Embedder
from vitdex.indexer.pipeline import Indexer
from vitdex.search.examples import rule_scores
from vitdex.search.results import QueryResult
from vitdex.search.service import SearchService
from vitdex.vectors.factory import open_store
from vitdex.vectors.store import SearchFilter

N = 24
#: Scores are rounded to six places in answers.
PLACES = 1e-5


@dataclass
class Library:
    """An indexed library, its service, and every stored vector of space ``cls``."""

    service: SearchService
    lib: Path
    photos: list[Path]
    ids: list[int]
    vectors: np.ndarray
    #: The catalog id of each of ``photos``.
    photo_ids: list[int]


@pytest.fixture(params=["faiss", "qdrant"])
def library(
    request: pytest.FixtureRequest,
    vitdex_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Library]:
    """24 photos indexed on each backend (Qdrant in its embedded local mode)."""
    monkeypatch.setenv("VITDEX_VECTOR_BACKEND", request.param)
    lib = tmp_path / "lib"
    photos = [
        make_photo(
            lib / ("a" if i % 2 else "b") / f"p{i:02d}.jpg",
            size=(96, 72),
            seed=i,
            taken_at=datetime(2023, 1 + i % 12, 1 + i, 12, 0, 0),
        )
        for i in range(N)
    ]
    settings = load_settings()
    engine = make_engine(settings.storage.resolved_database_url)
    ensure_schema(engine)
    sessions = session_factory(engine)
    Indexer(settings, sessions, Embedder.from_settings(settings.model)).run([lib])
    with sessions() as session:
        space = repo.get_space(session, "cls")
        ids = repo.vector_image_ids(session, space.id)
        photo_ids = [repo.find_image_by_path(session, str(p.resolve())).id for p in photos]  # type: ignore[union-attr]
    store = open_store(settings, "cls", space.dim)
    vectors = store.get(np.asarray(ids, np.int64))
    yield Library(SearchService(settings, sessions), lib, photos, ids, vectors, photo_ids)
    store.close()


def _truth(
    library: Library,
    positives: list[int],
    negatives: list[int] = (),  # type: ignore[assignment]
    weight: float = 0.5,
    allowed: set[int] | None = None,
) -> list[tuple[int, float]]:
    """Every photo but the examples, scored by the rule the long way, best first."""
    index = {image_id: row for row, image_id in enumerate(library.ids)}
    scores = rule_scores(
        library.vectors,
        library.vectors[[index[i] for i in positives]],
        library.vectors[[index[i] for i in negatives]] if negatives else None,
        weight,
    )
    pairs = [
        (i, float(s))
        for i, s in zip(library.ids, scores, strict=True)
        if i not in positives and i not in negatives and (allowed is None or i in allowed)
    ]
    return sorted(pairs, key=lambda p: -p[1])


def _cut(truth: list[tuple[int, float]], n: int) -> float:
    """A cut-off that exactly ``n`` of ``truth`` reach, midway between two scores (float32
    stores and float64 brute force disagree in the last places, right on a score)."""
    return (truth[n - 1][1] + truth[n][1]) / 2


def _assert_ranked(
    result: QueryResult | list[dict[str, Any]], truth: list[tuple[int, float]]
) -> None:
    """Hits equal ``truth`` rank by rank: scores within rounding, ids up to exact ties."""
    hits = result.hits if isinstance(result, QueryResult) else result
    got = [
        (h.image_id, h.score) if not isinstance(h, dict) else (h["image_id"], h["score"])
        for h in hits
    ]
    assert len(got) == len(truth), (got, truth)
    np.testing.assert_allclose([s for _, s in got], [s for _, s in truth], atol=PLACES)
    for (gid, gs), (tid, _) in zip(got, truth, strict=True):
        if gid != tid:
            tied = [i for i, s in truth if abs(s - gs) <= PLACES]
            assert gid in tied and tid in tied, f"{gid} instead of {tid} without a tie"


def test_examples_make_one_query_scored_by_the_rule(library: Library) -> None:
    a, b, c, d = (library.photo_ids[i] for i in (0, 5, 9, 14))
    svc = library.service
    (one,) = svc.similar(ids=[a, b], negative_ids=[c], k=8)
    _assert_ranked(one, _truth(library, [a, b], [c])[:8])
    assert one.image_id is None and " - " in one.query and one.next_offset == 8
    # Without a negative: --together; another weight; a single example stays plain cosine.
    (together,) = svc.similar(ids=[a, b], combine=True, k=N)
    _assert_ranked(together, _truth(library, [a, b]))
    assert together.next_offset is None
    (heavy,) = svc.similar(ids=[a], negative_ids=[c, d], negative_weight=2.0, k=5)
    _assert_ranked(heavy, _truth(library, [a], [c, d], 2.0)[:5])
    (plain,) = svc.similar(ids=[a], k=5)
    _assert_ranked(plain, _truth(library, [a])[:5])
    # Without combining, one list per example, as always.
    separate = svc.similar(ids=[a, b], k=3)
    assert [r.image_id for r in separate] == [a, b]
    # A file at a catalog path is that photo: the same query, and left out of the hits.
    (by_file,) = svc.similar(files=[library.photos[0]], ids=[b], negative_ids=[c], k=8)
    _assert_ranked(by_file, _truth(library, [a, b], [c])[:8])

    # Under a filter: brute force among the photos it allows.
    flt = SearchFilter(path_prefix=str(library.lib.resolve() / "a"))
    with svc.sessions() as session:
        allowed = set(repo.filter_image_ids(session, flt, repo.get_space(session, "cls").id))
    (filtered,) = svc.similar(ids=[a, b], negative_ids=[c], k=4, filter=flt)
    _assert_ranked(filtered, _truth(library, [a, b], [c], allowed=allowed)[:4])

    from vitdex.errors import ConfigError

    with pytest.raises(ConfigError, match="both a positive and a negative"):
        svc.similar(ids=[a], negative_ids=[a])
    with pytest.raises(ConfigError, match="at least one positive"):
        svc.similar(negative_ids=[a])
    with pytest.raises(ConfigError, match="negative_weight"):
        svc.similar(ids=[a], negative_ids=[b], negative_weight=-1)


def test_min_score_pages_past_k(library: Library) -> None:
    a, c = library.ids[3], library.ids[7]
    truth = _truth(library, [a], [c])
    cut = _cut(truth, len(truth) // 2)  # half the photos score at least this
    above = [p for p in truth if p[1] >= cut]
    svc = library.service
    everything = svc.similar(ids=[a], negative_ids=[c], k=None, min_score=cut)[0]
    _assert_ranked(everything, above)
    assert everything.next_offset is None
    # Page by page (k=3): no gap, no duplicate, the last page says it is the last.
    pages: list[Any] = []
    offset: int | None = 0
    while offset is not None:
        (page,) = svc.similar(ids=[a], negative_ids=[c], k=3, offset=offset, min_score=cut)
        assert len(page.hits) <= 3
        pages.extend(page.hits)
        offset = page.next_offset
    _assert_ranked(pages, above)
    assert len({h.image_id for h in pages}) == len(above)
    # One example, a cut-off no photo reaches.
    (none,) = svc.similar(ids=[a], k=5, min_score=1.5)
    assert none.hits == [] and none.next_offset is None


@pytest.fixture
def client(library: Library) -> Iterator[TestClient]:  # type: ignore[type-arg]
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize("library", ["faiss"], indirect=True)
def test_api_examples_and_cut_off(client: TestClient, library: Library) -> None:  # type: ignore[type-arg]
    a, b, c = (library.photo_ids[i] for i in (1, 2, 11))
    (want,) = library.service.similar(ids=[a, b], negative_ids=[c], k=6)
    got = client.post(
        "/api/v1/similar", json={"image_ids": [a, b], "negative_ids": [c]}, params={"k": 6}
    )
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["hits"] == [asdict(h) for h in want.hits]
    assert body["next_offset"] == 6 and body["min_score"] is None
    # The old body still answers as before.
    old = client.post("/api/v1/similar", json={"image_id": a}, params={"k": 3})
    assert old.status_code == 200 and old.json()["image_id"] == a

    # Uploads and ids mixed in one multipart query: the file of photo b is photo b.
    files = [
        ("file", ("b.jpg", library.photos[2].read_bytes(), "image/jpeg")),
        ("negative_file", ("c.jpg", library.photos[11].read_bytes(), "image/jpeg")),
    ]
    mixed = client.post("/api/v1/similar", files=files, data={"image_id": str(a)}, params={"k": 6})
    assert mixed.status_code == 200, mixed.text
    # An upload is never left out as itself (as for one upload): compare scores of the rest.
    truth = dict(_truth(library, [a, b], [c]))
    for hit in mixed.json()["hits"]:
        if hit["image_id"] in truth:
            assert hit["score"] == pytest.approx(truth[hit["image_id"]], abs=PLACES)

    # A cut-off, paged by next_offset.
    cut = _cut(_truth(library, [a], [c]), 10)
    seen: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:
        page = client.post(
            "/api/v1/similar",
            json={"image_id": a, "negative_ids": [c]},
            params={"k": 4, "offset": offset, "min_score": cut},
        ).json()
        assert page["min_score"] == cut
        seen.extend(page["hits"])
        offset = page["next_offset"]
    _assert_ranked(seen, [p for p in _truth(library, [a], [c]) if p[1] >= cut])
    # GET /images/{id}/similar takes the same cut-off.
    above = [p for p in _truth(library, [a], []) if p[1] >= cut]
    got = client.get(f"/api/v1/images/{a}/similar", params={"k": 100, "min_score": cut}).json()
    _assert_ranked(got["hits"], above)
    assert got["min_score"] == cut and got["next_offset"] is None

    for params, body, message in [
        ({"combine": "false"}, {"image_ids": [a, b]}, "one request per example"),
        ({"negative_weight": "-1"}, {"image_id": a, "negative_ids": [c]}, "negative_weight"),
        ({"min_score": "nan"}, {"image_id": a}, "min_score"),
        ({}, {"image_ids": [a], "negative_ids": [a]}, "both a positive and a negative"),
        ({}, {"image_ids": ["x"]}, "image ids"),
        ({}, {"negative_ids": [a]}, "image_id"),
    ]:
        bad = client.post("/api/v1/similar", json=body, params=params)
        assert bad.status_code == 400, (params, body, bad.text)
        assert message in bad.json()["detail"] or message in json.dumps(bad.json())
    gone = client.post("/api/v1/similar", json={"image_ids": [a], "negative_ids": [10**9]})
    assert gone.status_code == 404 and str(10**9) in gone.json()["detail"]


def _cli(*args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == code, result.output
    return json.loads(result.stdout) if "--json" in args else result


@pytest.mark.parametrize("library", ["faiss"], indirect=True)
def test_cli_similar(library: Library) -> None:
    a, b, c = (library.photo_ids[i] for i in (4, 6, 8))
    (one,) = _cli("similar", "--id", str(a), "--id", str(b), "--not", str(c), "--json")
    _assert_ranked(one["hits"], _truth(library, [a, b], [c])[:10])
    # --not takes a file too; a file query among the positives; --together without --not.
    (by_file,) = _cli(
        "similar", str(library.photos[4]), "--not", str(library.photos[8]), "-k", "5", "--json"
    )
    _assert_ranked(by_file["hits"], _truth(library, [a], [c])[:5])
    (together,) = _cli("similar", "--id", str(a), "--id", str(b), "--together", "--json")
    assert len(together["hits"]) == 10
    assert len(_cli("similar", "--id", str(a), "--id", str(b), "--json")) == 2

    # A cut-off without --k lists every hit at or above it; --k caps and says so.
    truth = _truth(library, [a])
    cut = _cut(truth, 13)
    (above,) = _cli("similar", "--id", str(a), "--min-score", str(cut), "--json")
    _assert_ranked(above["hits"], [p for p in truth if p[1] >= cut])
    capped = _cli("similar", "--id", str(a), "--min-score", str(cut), "--k", "3")
    assert "more hits score at least" in capped.stderr
    assert [line.split("\t")[0] for line in capped.stdout.splitlines()[2:]] == ["1", "2", "3"]

    # Tags and duplicate marks filter like the other conditions.
    with library.service.sessions.begin() as session:
        add_tag(session, "Beach", [b, c])
    (tagged,) = _cli("similar", "--id", str(a), "--tag", "beach", "--hide-duplicates", "--json")
    assert sorted(h["image_id"] for h in tagged["hits"]) == sorted([b, c])
    missing = _cli("similar", "--id", str(a), "--not", str(library.lib / "ghost.jpg"), code=2)
    assert "no such file" in missing.output
