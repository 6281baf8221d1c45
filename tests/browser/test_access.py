"""Signing in with a key, the session cookie, CSRF, and the libraries page."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import Site, start_site

pytestmark = pytest.mark.slow


@pytest.fixture
def locked(vitdex_env: dict[str, str], tmp_path: Path) -> Iterator[Site]:
    """The library served with API keys."""
    yield from start_site(vitdex_env, tmp_path, keys=["right-key", "other-key"])


def test_sign_in_keeps_a_session_and_guards_changes(
    locked: Site, page: Any, shot: Callable[[str], Path]
) -> None:
    page.watch.allow(r"/login$", 401)  # the wrong key, on purpose
    page.goto(f"{locked.url}/libraries")
    assert page.url.startswith(f"{locked.url}/login?next=")
    page.fill("#key", "wrong-key")
    page.click("button[type=submit]")
    page.get_by_role("alert").wait_for()
    assert "not valid" in page.get_by_role("alert").inner_text()
    shot("wrong-key")

    page.fill("#key", "right-key")
    page.click("button[type=submit]")
    page.wait_for_url(f"{locked.url}/libraries")
    page.locator("#libraries tbody tr").first.wait_for()
    cookie = next(c for c in page.context.cookies() if c["name"] == "vitdex_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert "right-key" not in cookie["value"]
    shot("signed-in")

    # The cookie alone reads; a change also needs the page's CSRF token.
    jar = {"vitdex_session": cookie["value"]}
    assert httpx.get(f"{locked.url}/api/v1/libraries", cookies=jar).status_code == 200
    forged = httpx.post(f"{locked.url}/api/v1/libraries/1/scan", cookies=jar, json={})
    assert forged.status_code == 403 and "CSRF" in forged.json()["detail"]
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    assert token
    scan = httpx.post(
        f"{locked.url}/api/v1/libraries/1/scan",
        cookies=jar,
        json={},
        headers={"X-CSRF-Token": token},
    )
    assert scan.status_code == 202, scan.text
    # Without a cookie or key nothing is answered; a tampered cookie is no cookie.
    assert httpx.get(f"{locked.url}/api/v1/libraries").status_code == 401
    bad = {"vitdex_session": cookie["value"][:-2] + "xx"}
    assert httpx.get(f"{locked.url}/api/v1/libraries", cookies=bad).status_code == 401
    # next= never leads off the site.
    off = httpx.get(f"{locked.url}/login", params={"next": "//evil.example/"}, cookies=jar)
    assert off.status_code == 303 and off.headers["location"] == "/"

    page.click("text=Sign out")
    page.wait_for_url(f"{locked.url}/login")
    assert not [c for c in page.context.cookies() if c["name"] == "vitdex_session" and c["value"]]
    page.goto(f"{locked.url}/libraries")
    assert "/login" in page.url


def test_libraries_add_rescan_forget(site: Site, page: Any, shot: Callable[[str], Path]) -> None:
    page.goto(f"{site.url}/libraries")
    rows = page.locator("#libraries tbody tr")
    rows.first.wait_for()
    assert rows.count() == 1
    assert rows.first.locator("td").nth(1).inner_text() == "18"

    # A folder outside the allowed roots is refused with the server's reason.
    page.watch.allow(r"/api/v1/libraries$", 403)
    page.fill("#library-path", "/etc")
    page.get_by_role("button", name="Add and index").click()
    page.locator(".toast.bad").wait_for()
    assert "allowed" in page.locator(".toast.bad").inner_text()

    page.get_by_role("button", name="Rescan").click()
    page.locator(".toast:not(.bad)").filter(has_text="succeeded").wait_for(timeout=60_000)
    shot("rescanned")
    page.on("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Forget").click()
    page.locator("#no-libraries").wait_for()
    shot("forgotten")
