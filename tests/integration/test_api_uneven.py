"""Rules that once held on some routes and not on others, checked over every route."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from vitdex.api import create_app

Client = TestClient[Litestar]

#: What ``curl -d`` sends without ``-H 'Content-Type: ...'``.
_CURL = "application/x-www-form-urlencoded"
#: Reads a JSON body itself (or multipart), so the document declares no JSON request body.
_SELF_PARSED = [("post", "/api/v1/similar")]


@pytest.fixture
def client(vitdex_env: dict[str, str]) -> Iterator[Client]:
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


def _json_routes(spec: dict) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    """Every operation under /api/v1 whose document takes a JSON request body."""
    found = list(_SELF_PARSED)
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            content = op.get("requestBody", {}).get("content", {})
            if path.startswith("/api/v1/") and "application/json" in content:
                found.append((method, path))
    return found


def test_every_json_route_reads_a_body_without_content_type_alike(client: Client) -> None:
    """The rule: a JSON body without ``Content-Type``, or with curl's default for ``-d``
    (as the README's example sends it), is read as JSON; one sent as another type is a
    415 naming JSON. ``/similar`` answered 415 to the first, the others took ``text/plain``
    as JSON."""
    spec = client.get("/schema/openapi.json").json()
    routes = _json_routes(spec)
    assert len(routes) >= 9, routes
    for method, path in routes:
        url = re.sub(r"\{[^}]+\}", "1", path)
        body = b'{"image_id": 1}'
        plain = client.request(method, url, content=body)
        typed = client.request(
            method, url, content=body, headers={"content-type": "application/json"}
        )
        where = f"{method.upper()} {path}"
        assert plain.status_code != 415, (where, plain.text)
        assert (plain.status_code, plain.json()) == (typed.status_code, typed.json()), where
        curl = client.request(method, url, content=body, headers={"content-type": _CURL})
        assert (curl.status_code, curl.json()) == (typed.status_code, typed.json()), where
        other = client.request(method, url, content=body, headers={"content-type": "text/plain"})
        assert other.status_code == 415, (where, other.text)
        assert "JSON" in other.json()["detail"], (where, other.text)
        if (method, path) not in _SELF_PARSED:
            assert "415" in spec["paths"][path][method]["responses"], where
