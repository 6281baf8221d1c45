"""The docs page at /schema works offline: every script, style and icon it loads is the app's."""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from litestar.testing import TestClient

from vitdex.api import create_app

#: The content type each kind of reference must answer with.
_EXPECTED_TYPE = {"script": "javascript", "stylesheet": "text/css", "icon": "image/"}


class _References(HTMLParser):
    """Collects ``(kind, url)`` for every ``<script src>`` and ``<link href>`` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "script" and named.get("src"):
            self.found.append(("script", str(named["src"])))
        elif tag == "link" and named.get("href"):
            self.found.append((str(named.get("rel") or "link"), str(named["href"])))


@pytest.fixture
def client(vitdex_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:  # type: ignore[type-arg]
    """An app with API keys on: the docs and their assets must stay open anyway."""
    monkeypatch.setenv("VITDEX_API_KEYS", "k1")
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize("page", ["/schema", "/schema/swagger"])
def test_docs_page_loads_only_own_assets(client: TestClient, page: str) -> None:  # type: ignore[type-arg]
    reply = client.get(page)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
    parser = _References()
    parser.feed(reply.text)
    kinds = {kind for kind, _ in parser.found}
    assert {"script", "stylesheet"} <= kinds, parser.found
    for kind, url in parser.found:
        parts = urlsplit(url)
        # Relative, or absolute on the app's own origin: nothing that needs the internet.
        assert parts.netloc in ("", "testserver.local"), url
        assert parts.scheme in ("", "http"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert _EXPECTED_TYPE[kind] in asset.headers["content-type"], (url, asset.headers)
        assert asset.content, url


def test_docs_serve_only_swagger_and_the_schema(client: TestClient) -> None:  # type: ignore[type-arg]
    assert client.get("/schema/openapi.json").json()["info"]["title"] == "vitdex"
    # Litestar's other UIs load from a CDN: they are not served at all.
    for page in ("/schema/redoc", "/schema/elements", "/schema/rapidoc", "/schema/scalar"):
        assert client.get(page).status_code == 404, page


@pytest.mark.parametrize(
    "escape",
    [
        "/schema/assets/..%2f..%2fetc/passwd",
        "/schema/assets/..%2f__init__.py",
        "/schema/assets/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/schema/assets/index.html",
        "/schema/assets/swagger-ui.css.map",
        "/schema/assets/",
    ],
)
def test_docs_assets_refuse_anything_else(client: TestClient, escape: str) -> None:  # type: ignore[type-arg]
    reply = client.get(escape)
    assert reply.status_code in (400, 404), (escape, reply.status_code)
    assert "root:" not in reply.text
