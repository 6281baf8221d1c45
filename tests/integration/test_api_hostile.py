"""Hostile requests against a real ``vitdex serve`` (uvicorn in a subprocess).

Each request here once ended in a 500, a ``text/plain`` answer, or acted on the wrong
row; each must now be a 4xx with the API's JSON error ``{"status_code", "detail"}``.
Run on SQLite and PostgreSQL: the out-of-int64 id reached PostgreSQL's driver as
``NumericValueOutOfRange``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import index_folder, served
from tests.photos import make_photo

#: Deeper than any decoder recursion limit, as sent in the fault campaign.
DEEP_ARRAYS = 100_000
DEEP_OBJECTS = 50_000


@pytest.fixture
def server(vitdex_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Index 3 photos (library 1), serve with ``vitdex serve``; yields (base URL, library)."""
    lib = tmp_path / "lib"
    for i in range(3):
        make_photo(lib / f"p{i}.jpg", size=(64, 48), seed=i)
    index_folder(lib)

    env = {**vitdex_env, "VITDEX_ALLOWED_ROOTS": str(tmp_path), "VITDEX_MAX_UPLOAD_MB": "1"}
    with served(env) as base:
        yield base, lib


def _json_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response is ``status`` with the API's JSON error body; that body."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["status_code"] == status and isinstance(body["detail"], str), body
    return body


def _post_json(client: httpx.Client, url: str, raw: bytes) -> httpx.Response:
    return client.post(url, content=raw, headers={"content-type": "application/json"})


def test_hostile_json_bodies_are_400(server: tuple[str, Path]) -> None:
    base, lib = server
    deep_arrays = b"[" * DEEP_ARRAYS + b"]" * DEEP_ARRAYS
    deep_objects = b'{"a":' * DEEP_OBJECTS + b"1" + b"}" * DEEP_OBJECTS
    with httpx.Client(base_url=base, timeout=60) as client:
        for raw in (
            b'{"image_id": 9223372036854775808}',
            b'{"image_id": ' + b"1" + b"0" * 40 + b"}",
        ):
            body = _json_error(_post_json(client, "/api/v1/similar", raw), 400)
            assert "9223372036854775807" in body["detail"], body
        body = _json_error(_post_json(client, "/api/v1/similar", b'{"image_id": 1e40}'), 400)
        assert "image_id" in body["detail"], body

        for url in ("/api/v1/similar", "/api/v1/libraries"):
            for raw in (deep_arrays, deep_objects):
                body = _json_error(_post_json(client, url, raw), 400)
                assert "nested too deeply" in body["detail"], (url, body)

        body = _json_error(client.post("/api/v1/libraries", json={"path": f"{lib}\x00x"}), 400)
        assert "NUL" in body["detail"], body
        # A big int anywhere in a body, not only in the fields a handler reads.
        raw = b'{"path": "%s", "extra": [1, {"n": 18446744073709551616}]}' % str(lib).encode()
        body = _json_error(_post_json(client, "/api/v1/libraries", raw), 400)
        assert "$.extra[1].n" in body["detail"], body

        # A misspelt filter field is refused by name, never read as "no filter" (which
        # would cluster, scan or tag the whole library).
        jobs_before = client.get("/api/v1/jobs").json()["total"]
        for url in ("/api/v1/clusters", "/api/v1/tags/rex/images", "/api/v1/duplicates/scan"):
            body = _json_error(client.post(url, json={"filter": {"tags": ["rex"]}}), 400)
            assert "unknown field `tags`" in body["detail"], (url, body)
        assert client.get("/api/v1/jobs").json()["total"] == jobs_before
        assert client.get("/api/v1/tags").json()["tags"] == []

        # The server is still well and the library list untouched.
        assert client.get("/health").status_code == 200
        libraries = client.get("/api/v1/libraries").json()["libraries"]
        assert [Path(lib_["root"]) for lib_ in libraries] == [lib]


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_only_canonical_ids_in_paths(server: tuple[str, Path], method: str) -> None:
    base, _ = server
    with httpx.Client(base_url=base, timeout=30) as client:
        library_id = client.get("/api/v1/libraries").json()["libraries"][0]["id"]
        image_id = client.get("/api/v1/images").json()["images"][0]["id"]
        assert library_id == 1
        for collection, real in (("libraries", library_id), ("images", image_id)):
            if method == "DELETE" and collection == "images":
                continue  # images are not deleted one by one
            for written in (f"0{real}", f"+{real}", f"%20{real}", f"{real}%20", "%EF%BC%91"):
                body = _json_error(client.request(method, f"/api/v1/{collection}/{written}"), 400)
                assert "plain decimal integer" in body["detail"], (written, body)
            for written in (f"{real}.0", f"0x{real}"):
                body = _json_error(client.request(method, f"/api/v1/{collection}/{written}"), 404)
                assert "plain decimal integers" in body["detail"], (written, body)
        others = {
            "GET": ["/api/v1/jobs/01", "/api/v1/clusters/+1", "/api/v1/datasets/01"],
            "DELETE": ["/api/v1/jobs/01", "/api/v1/datasets/+1", "/api/v1/checkpoints/%201"],
        }
        others["GET"] += ["/api/v1/images/01/similar", "/api/v1/training-runs/01"]
        for path in others[method]:
            _json_error(client.request(method, path), 400)
        if method == "GET":
            # Integer query parameters were already strict (msgspec): keep them so.
            for query in ("limit=01", "offset=+1", "limit=%201", "offset=0x1"):
                _json_error(client.get(f"/api/v1/images?{query}"), 400)
        # Nothing was deleted by a non-canonical id; the canonical one still works.
        assert client.get(f"/api/v1/libraries/{library_id}").status_code == 200
        assert client.get(f"/api/v1/images/{image_id}").status_code == 200


def _raw_exchange(base: str, request: bytes) -> bytes:
    """Send ``request`` on a fresh connection; everything the server answers until close."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def _parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return status, headers, body


def test_refusals_before_the_app_are_json(server: tuple[str, Path]) -> None:
    """413/415 refused by headers alone, and requests uvicorn itself cannot parse."""
    import json

    base, _ = server
    cases = [
        # Declared far past the limit: refused by Content-Length before the body is read.
        (
            b"POST /api/v1/libraries HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 9999999999\r\nConnection: close\r\n\r\n{}",
            413,
        ),
        (
            b"POST /api/v1/similar HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 5\r\nConnection: close\r\n\r\nhello",
            415,
        ),
        # Malformed framing: uvicorn answers these without calling the app.
        (
            b"POST /api/v1/libraries HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: -1\r\n\r\n{}",
            400,
        ),
        (
            b"POST /api/v1/libraries HTTP/1.1\r\nHost: x\r\nContent-Length: 1e9\r\n\r\n{}",
            400,
        ),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
    ]
    for request, status in cases:
        got, headers, body = _parse(_raw_exchange(base, request))
        assert got == status, (request, got, body)
        assert headers["content-type"].startswith("application/json"), (request, headers, body)
        answer = json.loads(body)
        assert answer["status_code"] == status and answer["detail"], (request, answer)
