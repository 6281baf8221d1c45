"""Pages and API under API keys: sign-in, session cookie, CSRF (without a browser)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from vitdex.api import create_app

Client = TestClient[Litestar]


@pytest.fixture
def client(vitdex_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    monkeypatch.setenv("VITDEX_API_KEYS", "k1,k2")
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


def test_pages_ask_for_a_key_once_and_changes_need_the_token(client: Client) -> None:
    first = client.get("/libraries", follow_redirects=False)
    assert first.status_code == 303
    assert first.headers["location"] == "/login?next=%2Flibraries"
    wrong = client.post("/login", data={"key": "nope", "next": "/libraries"})
    assert wrong.status_code == 401 and "not valid" in wrong.text
    assert "vitdex_session" not in client.cookies
    signed = client.post("/login", data={"key": "k2", "next": "/libraries"}, follow_redirects=False)
    assert signed.status_code == 303 and signed.headers["location"] == "/libraries"
    set_cookie = signed.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=lax" in set_cookie
    page = client.get("/libraries")
    assert page.status_code == 200
    token = page.text.split('name="csrf-token" content="')[1].split('"')[0]
    assert len(token) > 20

    assert client.get("/api/v1/libraries").status_code == 200
    refused = client.post("/api/v1/clusters", json={"k": 2})
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    wrong_token = client.post("/api/v1/clusters", json={"k": 2}, headers={"X-CSRF-Token": "x"})
    assert wrong_token.status_code == 403
    # With the token the request goes through to the handler (the empty catalog answers).
    allowed = client.post("/api/v1/clusters", json={"k": 2}, headers={"X-CSRF-Token": token})
    assert allowed.status_code not in (401, 403), allowed.text
    # A key still works on its own, without cookie or token (scripts, curl).
    client.cookies.clear()
    assert client.get("/api/v1/libraries", headers={"X-API-Key": "k1"}).status_code == 200
    assert client.get("/api/v1/libraries").status_code == 401


def test_sign_out_needs_the_token(client: Client) -> None:
    client.post("/login", data={"key": "k1"})
    token = client.get("/libraries").text.split('name="csrf-token" content="')[1].split('"')[0]
    kept = client.post("/logout", data={"csrf": "forged"}, follow_redirects=False)
    assert kept.headers["location"] == "/" and client.get("/api/v1/libraries").status_code == 200
    out = client.post("/logout", data={"csrf": token}, follow_redirects=False)
    assert out.headers["location"] == "/login"
    client.cookies.clear()  # what the browser does with max-age=0
    assert client.get("/api/v1/libraries").status_code == 401


NAV_PAGES = ["/", "/search", "/map", "/clusters", "/datasets", "/jobs", "/libraries"]


def test_every_page_asks_for_the_key_and_static_files_are_open(client: Client) -> None:
    """No page renders for a stranger; the scripts and styles (no data in them) load for
    the sign-in page itself."""
    for path in [*NAV_PAGES, "/photos/1", "/datasets/1", "/runs/1", "/clusters/1"]:
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/login?next="), path
    for asset in ("/static/app.js", "/static/app.css", "/static/tiles.js"):
        assert client.get(asset).status_code == 200, asset
    assert client.get("/static/../../etc/passwd").status_code == 404
    client.post("/login", data={"key": "k1"})
    for path in NAV_PAGES:
        answer = client.get(path)
        assert answer.status_code == 200, path
        # No script but the site's own runs on a page, and no other site frames it.
        policy = answer.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy, path
        assert answer.headers["x-content-type-options"] == "nosniff"
