"""Every page opens cleanly: no console error, no failed request, a heading, a screenshot."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import Site

pytestmark = pytest.mark.slow

#: Every page a person can reach, with the heading it must show.
PAGES = [
    ("/", "Library"),
    ("/photos/1", None),
    ("/search?image_id=1", "Search"),
    ("/map", "Map"),
    ("/clusters", "Clusters"),
    ("/duplicates", "Duplicates"),
    ("/tags", "Tags"),
    ("/datasets", "Datasets"),
    ("/jobs", "Jobs"),
    ("/libraries", "Libraries"),
]


def test_every_page_opens_without_errors(
    site: Site, page: Any, shot: Callable[[str], Path]
) -> None:
    for path, heading in PAGES:
        page.goto(f"{site.url}{path}")
        page.wait_for_load_state("networkidle")
        h1 = page.locator("h1").first
        h1.wait_for()
        if heading is not None:
            assert heading in h1.inner_text(), (path, h1.inner_text())
        # The navigation marks where we are and is reachable by keyboard.
        page.keyboard.press("Tab")
        focused = page.evaluate("document.activeElement?.textContent || ''")
        assert focused.strip(), f"{path}: Tab focuses nothing"
        shot(path.strip("/").replace("/", "-").replace("?", "-") or "library")

    # An unknown photo is a page saying so, not a blank page or a traceback.
    page.watch.allow(r"/photos/999999$", 404)
    page.watch.allow(r"/api/v1/images/999999", 404)
    response = page.goto(f"{site.url}/photos/999999")
    assert response is not None and response.status == 404
    assert "999999" in page.locator("main").inner_text()
    assert "Traceback" not in page.content()
    shot("unknown-photo")
