"""The HTTP API through Litestar's test client, against a small library indexed for real."""

from __future__ import annotations

import io
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from litestar.testing import TestClient
from PIL import Image

from tests.photos import make_photo
from vitdex.api import create_app
from vitdex.config import Settings, load_settings
from vitdex.db import ensure_schema, make_engine, session_factory
from vitdex.indexer.embedder import Embedder
from vitdex.indexer.pipeline import Indexer
from vitdex.search.service import SearchService
from vitdex.vectors.store import SearchFilter

CAMERAS = [("Canon", "EOS R5"), ("Apple", "iPhone 15"), ("Sony", "A7 IV")]


@dataclass
class Indexed:
    """A small indexed library with the settings and service that answer it directly."""

    settings: Settings
    service: SearchService
    lib: Path
    photos: list[Path]


@pytest.fixture
def indexed(vitdex_env: dict[str, str], tmp_path: Path) -> Indexed:
    """14 photos in two folders, with dates and cameras, indexed with the tiny ViT."""
    lib = tmp_path / "lib"
    photos = [
        make_photo(
            lib / ("trip" if i % 2 else "home") / f"p{i:02d}.jpg",
            size=(96, 72),
            seed=i,
            taken_at=datetime(2023, 1 + i % 12, 1 + i, 12, 0, 0),
            camera=CAMERAS[i % 3],
        )
        for i in range(14)
    ]
    settings = load_settings()
    engine = make_engine(settings.storage.resolved_database_url)
    ensure_schema(engine)
    sessions = session_factory(engine)
    Indexer(settings, sessions, Embedder.from_settings(settings.model)).run([lib])
    return Indexed(settings, SearchService(settings, sessions), lib, photos)


@pytest.fixture
def client(indexed: Indexed) -> Iterator[TestClient]:  # type: ignore[type-arg]
    """A test client of a fresh app over the indexed library."""
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


def _upload(path: Path) -> dict[str, tuple[str, bytes, str]]:
    return {"file": (path.name, path.read_bytes(), "image/jpeg")}


def _ids(body: dict) -> list[int]:  # type: ignore[type-arg]
    return [h["image_id"] for h in body["hits"]]


def _image_id(client: TestClient, path: Path) -> int:  # type: ignore[type-arg]
    page = client.get("/api/v1/images", params={"limit": 100}).json()
    return int(next(img["id"] for img in page["images"] if img["path"] == str(path)))


def test_similar_matches_the_service(client: TestClient, indexed: Indexed) -> None:  # type: ignore[type-arg]
    qid = _image_id(client, indexed.photos[0])
    (truth,) = indexed.service.similar(ids=[qid], k=6)
    want = [h.image_id for h in truth.hits]

    by_get = client.get(f"/api/v1/images/{qid}/similar", params={"k": 6})
    assert by_get.status_code == 200, by_get.text
    body = by_get.json()
    assert _ids(body) == want
    assert body["k"] == 6 and body["offset"] == 0 and body["image_id"] == qid
    assert body["space"] == "cls"
    hit = body["hits"][0]
    assert {"score", "path", "width", "taken_at", "camera_make", "labels"} <= hit.keys()
    assert hit["score"] == pytest.approx(truth.hits[0].score, abs=1e-5)
    # One hit type: the service's hits are the API's, field for field.
    assert body["hits"] == [asdict(h) for h in truth.hits]

    by_post = client.post("/api/v1/similar", json={"image_id": qid}, params={"k": 6})
    assert by_post.status_code == 200 and _ids(by_post.json()) == want

    # A new photo (not in the catalog) is embedded by the model; the same one as a file.
    new = make_photo(indexed.lib.parent / "new.jpg", size=(96, 72), seed=99)
    (truth_new,) = indexed.service.similar(files=[new], k=5, space="cls@2")
    up = client.post("/api/v1/similar", files=_upload(new), params={"k": 5, "space": "cls@2"})
    assert up.status_code == 200, up.text
    assert up.json()["query"] == "new.jpg" and up.json()["space"] == "cls@2"
    assert _ids(up.json()) == [h.image_id for h in truth_new.hits]
    # An upload is searched from its bytes, as the same photo read from a file is.
    (by_bytes,) = indexed.service.similar(
        uploads=[("new.jpg", new.read_bytes())], k=5, space="cls@2"
    )
    assert (by_bytes.query, by_bytes.image_id) == ("new.jpg", None)
    assert by_bytes.hits == truth_new.hits
    assert up.json()["hits"] == [asdict(h) for h in by_bytes.hits]

    # Paging: offset 0 and offset 3 (k=3 each) concatenate to the k=6 list.
    first = client.get(f"/api/v1/images/{qid}/similar", params={"k": 3, "offset": 0}).json()
    second = client.get(f"/api/v1/images/{qid}/similar", params={"k": 3, "offset": 3}).json()
    assert _ids(first) + _ids(second) == want
    (paged,) = indexed.service.similar(ids=[qid], k=3, offset=3)
    assert [h.image_id for h in paged.hits] == want[3:]

    # In-process latency of a similar-by-id query once the store is open.
    started = time.perf_counter()
    for _ in range(20):
        assert client.get(f"/api/v1/images/{qid}/similar", params={"k": 10}).status_code == 200
    per_query_ms = (time.perf_counter() - started) / 20 * 1000
    print(f"similar by id: {per_query_ms:.1f} ms per request")
    assert per_query_ms < 500


def test_similar_filters(client: TestClient, indexed: Indexed) -> None:  # type: ignore[type-arg]
    qid = _image_id(client, indexed.photos[0])
    flt = SearchFilter(
        path_prefix=str(indexed.lib / "trip"),
        taken_after=datetime(2023, 3, 1),
        camera_make="Apple",
    )
    (truth,) = indexed.service.similar(ids=[qid], k=10, filter=flt)
    got = client.get(
        f"/api/v1/images/{qid}/similar",
        params={
            "k": 10,
            "folder": str(indexed.lib / "trip"),
            "taken_after": "2023-03-01T00:00:00",
            "camera_make": "Apple",
        },
    )
    assert got.status_code == 200, got.text
    assert _ids(got.json()) == [h.image_id for h in truth.hits]
    assert got.json()["hits"], "the filter should leave some neighbours"
    for hit in got.json()["hits"]:
        assert hit["camera_make"] == "Apple" and "/trip/" in hit["path"]

    label = client.get("/api/v1/labels").json()["labels"][0]["label"]
    by_label = client.post(
        "/api/v1/similar", json={"image_id": qid}, params={"label": label, "k": 20}
    ).json()
    assert by_label["hits"]
    assert all(label in [lab["label"] for lab in h["labels"]] for h in by_label["hits"])

    lib_id = client.get(f"/api/v1/images/{qid}").json()["library_id"]
    assert client.get(
        f"/api/v1/images/{qid}/similar", params={"library_id": [lib_id, lib_id + 1]}
    ).json()["hits"]
    assert (
        client.get(f"/api/v1/images/{qid}/similar", params={"library_id": lib_id + 1}).json()[
            "hits"
        ]
        == []
    )


def test_classify(client: TestClient, indexed: Indexed) -> None:  # type: ignore[type-arg]
    (truth,) = indexed.service.classify([indexed.photos[3]], k=3)
    got = client.post("/api/v1/classify", files=_upload(indexed.photos[3]), params={"k": 3})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["query"] == indexed.photos[3].name
    assert [lab["label"] for lab in body["labels"]] == [lab.label for lab in truth.labels]
    upload = (indexed.photos[3].name, indexed.photos[3].read_bytes())
    (by_bytes,) = indexed.service.classify(uploads=[upload], k=3)
    assert body == asdict(by_bytes)


def test_images_browse_detail_labels(client: TestClient, indexed: Indexed) -> None:  # type: ignore[type-arg]
    page = client.get("/api/v1/images", params={"limit": 5}).json()
    assert page["total"] == 14 and len(page["images"]) == 5
    taken = [img["taken_at"] for img in page["images"]]
    assert taken == sorted(taken, reverse=True)
    rest = client.get("/api/v1/images", params={"limit": 100, "offset": 5}).json()
    assert len(rest["images"]) == 9
    assert not {i["id"] for i in page["images"]} & {i["id"] for i in rest["images"]}

    sony = client.get(
        "/api/v1/images", params={"camera_make": "Sony", "status": "indexed", "limit": 100}
    ).json()
    assert sony["total"] == len([i for i in range(14) if i % 3 == 2])
    assert client.get("/api/v1/images", params={"status": "failed"}).json()["total"] == 0
    before = client.get("/api/v1/images", params={"taken_before": "2023-04-01T00:00:00"}).json()
    assert before["total"] == 5  # i = 0, 1, 2 (Jan 1, Feb 2, Mar 3), 12 and 13 (Jan 13, Feb 14)

    img = page["images"][0]
    detail = client.get(f"/api/v1/images/{img['id']}").json()
    assert detail["path"] == img["path"] and detail["status"] == "indexed"
    assert detail["labels"] and detail["sha256"]
    # Capture time as the camera's clock showed it (EXIF has no zone); catalog times in UTC.
    assert datetime.fromisoformat(detail["taken_at"]).tzinfo is None
    assert datetime.fromisoformat(detail["indexed_at"]).utcoffset() == timedelta(0)

    labels = client.get("/api/v1/labels").json()["labels"]
    counts = [lab["count"] for lab in labels]
    assert counts == sorted(counts, reverse=True) and sum(counts) >= 14
    top = labels[0]
    flt = client.get("/api/v1/images", params={"label": top["label"]}).json()
    assert flt["total"] == top["count"]


def test_date_filters_take_dates_and_datetimes(client: TestClient, indexed: Indexed) -> None:  # type: ignore[type-arg]
    """taken_after/taken_before take a plain date (midnight) as the CLI does, or a
    date-time, on every route with the filter; anything else is a 400 naming the forms."""
    qid = _image_id(client, indexed.photos[0])
    routes = [("GET", "/api/v1/images"), ("GET", f"/api/v1/images/{qid}/similar")]
    routes.append(("POST", "/api/v1/similar"))
    for method, url in routes:
        body = {"image_id": qid} if method == "POST" else None
        counts = []
        for value in ("2023-04-01", "2023-04-01T00:00:00", "2023-04-01T00:00:00+02:00"):
            answer = client.request(method, url, params={"taken_before": value}, json=body)
            assert answer.status_code == 200, (method, url, value, answer.text)
            found = answer.json()
            counts.append(found["total"] if "total" in found else len(found["hits"]))
        assert len(set(counts)) == 1, (url, counts)
        bad = client.request(method, url, params={"taken_after": "2023-13-01"}, json=body)
        assert bad.status_code == 400, (url, bad.text)
        assert "taken_after must be an ISO date" in bad.json()["detail"]
        assert "2023-13-01" in bad.json()["detail"]
    before = client.get("/api/v1/images", params={"taken_before": "2023-04-01"}).json()
    assert before["total"] == 5
    spec = client.get("/schema/openapi.json").json()
    for path, method in (("/api/v1/images", "get"), ("/api/v1/similar", "post")):
        params = {p["name"]: p for p in spec["paths"][path][method]["parameters"]}
        for name in ("taken_after", "taken_before"):
            schema = params[name]["schema"]
            types = {c.get("type") for c in schema.get("oneOf", [schema])} - {"null"}
            assert types == {"string"} and "format" not in schema, (path, name, schema)
            assert "YYYY-MM-DD" in params[name]["description"]


def test_thumbnail_and_file(client: TestClient, indexed: Indexed) -> None:  # type: ignore[type-arg]
    qid = _image_id(client, indexed.photos[1])
    thumb = client.get(f"/api/v1/images/{qid}/thumbnail", params={"size": 64})
    assert thumb.status_code == 200, thumb.text
    assert thumb.headers["content-type"] == "image/jpeg"
    pic = Image.open(io.BytesIO(thumb.content))
    assert pic.format == "JPEG" and max(pic.size) == 64 and pic.size == (64, 48)

    cached = list((indexed.settings.storage.home / "thumbnails" / "64").glob(f"{qid}-*.jpg"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    again = client.get(f"/api/v1/images/{qid}/thumbnail", params={"size": 64})
    assert again.content == thumb.content and cached[0].stat().st_mtime_ns == mtime

    default = client.get(f"/api/v1/images/{qid}/thumbnail")
    assert max(Image.open(io.BytesIO(default.content)).size) == 96  # never upscaled

    original = client.get(f"/api/v1/images/{qid}/file")
    assert original.status_code == 200
    assert original.headers["content-type"] == "image/jpeg"
    assert original.content == indexed.photos[1].read_bytes()

    indexed.photos[1].unlink()
    gone = client.get(f"/api/v1/images/{qid}/file")
    assert gone.status_code == 404 and "gone" in gone.json()["detail"]
    # The cached thumbnail outlives the file.
    assert client.get(f"/api/v1/images/{qid}/thumbnail", params={"size": 64}).status_code == 200
    assert client.get(f"/api/v1/images/{qid}/thumbnail", params={"size": 128}).status_code == 404


def _png_bomb(width: int, height: int) -> bytes:
    """A PNG header claiming a huge size, with a tiny (invalid) body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_bad_input_is_never_a_500(client: TestClient, indexed: Indexed) -> None:  # type: ignore[type-arg]
    qid = _image_id(client, indexed.photos[0])
    cases: list[tuple[str, str, dict, int]] = [  # type: ignore[type-arg]
        (
            "text upload",
            "POST /api/v1/similar",
            {"files": {"file": ("a.txt", b"hello", "text/plain")}},
            422,
        ),
        (
            "garbage upload",
            "POST /api/v1/classify",
            {"files": {"file": ("x.jpg", b"\xff\xd8\xff\x00garbage", "image/jpeg")}},
            422,
        ),
        (
            "empty upload",
            "POST /api/v1/similar",
            {"files": {"file": ("e.jpg", b"", "image/jpeg")}},
            422,
        ),
        (
            "bomb",
            "POST /api/v1/similar",
            {"files": {"file": ("b.png", _png_bomb(40000, 40000), "image/png")}},
            422,
        ),
        (
            "no file field",
            "POST /api/v1/similar",
            {"files": {"other": ("a.jpg", b"x", "image/jpeg")}},
            400,
        ),
        ("no file for classify", "POST /api/v1/classify", {"data": {"x": "1"}}, 400),
        (
            "plain text body",
            "POST /api/v1/similar",
            {"content": b"hi", "headers": {"content-type": "text/plain"}},
            415,
        ),
        (
            "bad json",
            "POST /api/v1/similar",
            {"content": b"{", "headers": {"content-type": "application/json"}},
            400,
        ),
        ("bad image_id", "POST /api/v1/similar", {"json": {"image_id": "x"}}, 400),
        ("unknown id by json", "POST /api/v1/similar", {"json": {"image_id": 999999}}, 404),
        ("unknown id", "GET /api/v1/images/999999", {}, 404),
        ("unknown id similar", "GET /api/v1/images/999999/similar", {}, 404),
        ("unknown id thumbnail", "GET /api/v1/images/999999/thumbnail", {}, 404),
        ("unknown id file", "GET /api/v1/images/999999/file", {}, 404),
        ("huge id", f"GET /api/v1/images/{2**70}", {}, 400),
        ("k=0", f"GET /api/v1/images/{qid}/similar?k=0", {}, 400),
        ("k too big", f"GET /api/v1/images/{qid}/similar?k=1001", {}, 400),
        ("k not a number", f"GET /api/v1/images/{qid}/similar?k=ten", {}, 400),
        ("negative offset", f"GET /api/v1/images/{qid}/similar?offset=-1", {}, 400),
        ("bad date", f"GET /api/v1/images/{qid}/similar?taken_after=yesterday", {}, 400),
        (
            "dates reversed",
            f"GET /api/v1/images/{qid}/similar?taken_after=2024-01-01&taken_before=2023-01-01",
            {},
            400,
        ),
        ("unknown space", f"GET /api/v1/images/{qid}/similar?space=nope", {}, 400),
        ("bad library id", "GET /api/v1/images?library_id=abc", {}, 400),
        ("bad status", "GET /api/v1/images?status=weird", {}, 400),
        ("thumbnail too small", f"GET /api/v1/images/{qid}/thumbnail?size=10", {}, 400),
        ("thumbnail too big", f"GET /api/v1/images/{qid}/thumbnail?size=5000", {}, 400),
        ("classify k=0", "POST /api/v1/classify?k=0", {"files": _upload(indexed.photos[0])}, 400),
        ("unknown route", "GET /api/v1/nothing", {}, 404),
    ]
    for name, target, kwargs, want in cases:
        method, url = target.split(" ", 1)
        reply = client.request(method, url, **kwargs)
        assert reply.status_code == want, f"{name}: {reply.status_code} {reply.text}"
        body = reply.json()
        assert body["status_code"] == want and body["detail"], name
        assert "Traceback" not in reply.text, name
    bomb = client.post(
        "/api/v1/similar", files={"file": ("b.png", _png_bomb(40000, 40000), "image/png")}
    )
    assert "too large" in bomb.json()["detail"]
    text = client.post("/api/v1/similar", files={"file": ("a.txt", b"hello", "text/plain")})
    assert "not an image" in text.json()["detail"]


def test_upload_limit(indexed: Indexed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITDEX_MAX_UPLOAD_MB", "0.5")
    big = indexed.lib.parent / "big.png"
    Image.effect_noise((600, 600), 64).convert("RGB").save(big)
    assert big.stat().st_size > 600 * 1024
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        reply = client.post(
            "/api/v1/similar", files={"file": ("big.png", big.read_bytes(), "image/png")}
        )
        assert reply.status_code == 413 and reply.json()["status_code"] == 413
        small = client.post("/api/v1/similar", files=_upload(indexed.photos[0]))
        assert small.status_code == 200


def test_api_keys(indexed: Indexed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITDEX_API_KEYS", "k1,k2")
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        denied = client.get("/api/v1/images")
        assert denied.status_code == 401 and "API key" in denied.json()["detail"]
        assert client.get("/api/v1/images", headers={"X-API-Key": "wrong"}).status_code == 401
        assert (
            client.get("/api/v1/images", headers={"Authorization": "Bearer k1"}).status_code == 200
        )
        assert client.get("/api/v1/labels", headers={"X-API-Key": "k2"}).status_code == 200
        assert client.post("/api/v1/similar", json={"image_id": 1}).status_code == 401
        for open_path in ("/health", "/ready", "/metrics", "/schema/openapi.json"):
            assert client.get(open_path).status_code == 200, open_path
        # The document says how to send a key, and that every /api/v1 call may be a 401.
        spec = client.get("/schema/openapi.json").json()
        schemes = spec["components"]["securitySchemes"]
        assert schemes["bearer"]["scheme"] == "bearer"
        assert (schemes["apiKey"]["in"], schemes["apiKey"]["name"]) == ("header", "X-API-Key")
        for path, operations in spec["paths"].items():
            for method, op in operations.items():
                guarded = path.startswith("/api/v1/")
                assert ("401" in op["responses"]) == guarded, f"{method} {path}"
                assert bool(op.get("security")) == guarded, f"{method} {path}"
    monkeypatch.delenv("VITDEX_API_KEYS")
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        assert client.get("/api/v1/images").status_code == 200
        spec = client.get("/schema/openapi.json").json()
        assert "securitySchemes" not in spec.get("components", {})
        assert all(
            "401" not in op["responses"] for ops in spec["paths"].values() for op in ops.values()
        )


def test_health_ready_metrics_openapi(
    indexed: Indexed, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VITDEX_REDIS_URL", "redis://127.0.0.1:6379/15")
    monkeypatch.setenv("VITDEX_QUEUE_NAME", f"vitdex-test-{tmp_path.name}")
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        assert client.get("/health").json() == {"status": "ok"}
        ready = client.get("/ready")
        # The test Redis (started by .ci/run) must answer, like every other Redis test's.
        assert ready.status_code == 200 and ready.json()["ready"] is True, ready.text
        qid = _image_id(client, indexed.photos[0])
        client.get(f"/api/v1/images/{qid}/similar")
        client.get("/api/v1/images/999999")
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith(
            "text/plain"
        )
        text = metrics.text
        assert "vitdex_images_indexed 14.0" in text
        assert 'vitdex_images{status="indexed"} 14.0' in text
        assert "vitdex_queue_depth 0.0" in text
        route = "/api/v1/images/{image_id}"
        ok = f'method="GET",route="{route}/similar",status="200"'
        assert f"vitdex_http_request_duration_seconds_count{{{ok}}} 1.0" in text
        assert f'vitdex_http_request_duration_seconds_bucket{{le="0.005",{ok}}}' in text
        missing = f'method="GET",route="{route}",status="404"'
        assert f"vitdex_http_requests_total{{{missing}}} 1.0" in text

        spec = client.get("/schema/openapi.json").json()
        assert spec["openapi"].startswith("3.")
        for path in (
            "/health",
            "/ready",
            "/api/v1/similar",
            "/api/v1/classify",
            "/api/v1/images",
            "/api/v1/images/{image_id}",
            "/api/v1/images/{image_id}/similar",
            "/api/v1/images/{image_id}/thumbnail",
            "/api/v1/images/{image_id}/file",
            "/api/v1/labels",
        ):
            assert path in spec["paths"], path
        for path, operations in spec["paths"].items():
            for method, op in operations.items():
                assert op["responses"], f"{method} {path} documents no response"
                if not path.startswith("/api/v1/"):
                    continue
                # Every operation documents its errors, each in the API's error shape.
                assert "400" in op["responses"], f"{method} {path}"
                assert ("404" in op["responses"]) >= ("{" in path), f"{method} {path}"
                for status, answer in op["responses"].items():
                    if status.startswith(("4", "5")):
                        body = answer["content"]["application/json"]["schema"]
                        assert set(body["required"]) == {"status_code", "detail"}
        similar = spec["paths"]["/api/v1/similar"]["post"]["responses"]
        assert {"404", "409", "413", "415", "422", "503"} <= set(similar)
        similar_params = {
            p["name"]
            for p in spec["paths"]["/api/v1/images/{image_id}/similar"]["get"]["parameters"]
        }
        assert {"k", "offset", "space", "library_id", "taken_after", "label"} <= similar_params
        assert client.get("/schema").status_code == 200

    monkeypatch.setenv("VITDEX_REDIS_URL", "redis://127.0.0.1:1/0")
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        down = client.get("/ready")
        assert down.status_code == 503
        assert down.json()["checks"]["queue"].startswith("failed")
        assert down.json()["checks"]["database"] == "ok"


def _resolve(spec: dict, schema: dict) -> dict:  # type: ignore[type-arg]
    """A schema with its ``$ref`` (to ``#/components/schemas/...``) followed."""
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


@pytest.mark.usefixtures("vitdex_env")  # a home and a catalog for the app
def test_every_api_response_is_typed() -> None:
    """Every 2xx JSON answer under /api/v1 is documented field by field: a handler that
    returns a bare dict (an ``object`` without properties) fails here."""
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        spec = client.get("/schema/openapi.json").json()
    untyped = []
    answers = 0
    for path, operations in spec["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        for method, op in operations.items():
            for status, answer in op["responses"].items():
                body = answer.get("content", {}).get("application/json")
                if not status.startswith("2") or body is None:
                    continue
                answers += 1
                schema = _resolve(spec, body.get("schema", {}))
                choices = schema.get("oneOf") or schema.get("anyOf") or [schema]
                if not all(_resolve(spec, c).get("properties") for c in choices):
                    untyped.append(f"{method.upper()} {path} {status}: {schema}")
    assert answers >= 30, answers
    assert not untyped, "\n".join(untyped)


@pytest.mark.usefixtures("vitdex_env")  # a home and a catalog for the app
def test_every_operation_has_its_own_id_summary_and_description() -> None:
    """Clients generated from the document name their methods by operationId: a generic
    or repeated one (``GetOne`` five times) makes them clash or read as nothing."""
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        spec = client.get("/schema/openapi.json").json()
    seen: dict[str, str] = {}
    problems = []
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            where = f"{method.upper()} {path}"
            op_id = op.get("operationId")
            if not op_id:
                problems.append(f"{where}: no operationId")
            elif op_id in seen:
                problems.append(f"{where}: operationId {op_id!r} also on {seen[op_id]}")
            else:
                seen[op_id] = where
            for key in ("summary", "description"):
                if not (op.get(key) or "").strip():
                    problems.append(f"{where}: no {key}")
    assert len(seen) >= 30, seen
    assert not problems, "\n".join(problems)


def test_controllers_hold_no_sql() -> None:
    """Controllers parse, call a service and return a schema: none opens a session or
    builds SQL itself."""
    import ast

    import vitdex.api.controllers as package

    folder = Path(package.__file__).parent
    found = []
    for module in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module in {"sqlalchemy", "vitdex.db"}:
                found.append(f"{module.name}:{node.lineno} imports from {node.module}")
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                if name in {"sessions", "select", "text"} or name.startswith("session."):
                    found.append(f"{module.name}:{node.lineno} calls {name}")
    assert not found, "\n".join(found)
