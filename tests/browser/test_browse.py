"""The library grid, a photo page and the search page, driven in chromium."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.browser.conftest import Site, wait_until

Shot = Callable[[str], Path]


def _selected(page: Any) -> int:
    return int(page.evaluate("window.vitdex.selection.ids().size"))


def _tile_ids(page: Any, scope: str = "#grid") -> list[int]:
    return [
        int(i)
        for i in page.locator(f"{scope} .tile").evaluate_all("ts => ts.map(t => t.dataset.id)")
    ]


def _facet(page: Any, name: str) -> dict[str, int]:
    """The facet's values and counts as the sidebar shows them."""
    buttons = page.locator(f'#facets [data-facet="{name}"] li button')
    out = {}
    for text in buttons.all_inner_texts():
        value, count = text.rsplit("\n", 1) if "\n" in text else text.rsplit(" ", 1)
        out[value.strip()] = int(count.replace(",", ""))
    return out


def test_browse_filter_and_select(site: Site, page: Any, shot: Shot) -> None:
    page.goto(site.url + "/")
    grid = page.locator("#grid .tile")
    wait_until(page, "document.querySelectorAll('#grid .tile').length === 18")
    assert page.locator("#total").inner_text() == "18 photos"
    page.locator('#facets [data-facet="camera_make"]').wait_for()
    assert _facet(page, "camera_make") == {"Canon": 6, "Apple": 6, "Sony": 6}
    assert sum(_facet(page, "year").values()) == 18
    # Every thumbnail arrives and decodes (made on first request, then cached).
    wait_until(
        page,
        "[...document.querySelectorAll('#grid img')].every((i) => i.complete && i.naturalWidth)",
    )
    shot("library")

    # A camera facet narrows the grid and the other facets; the URL says so.
    page.locator('#facets [data-facet="camera_make"] button', has_text="Canon").click()
    page.wait_for_url(re.compile(r"/\?camera_make=Canon$"))
    wait_until(page, "document.querySelectorAll('#grid .tile').length === 6")
    assert page.locator("#total").inner_text() == "6 photos"
    models = "document.querySelector('#facets [data-facet=camera_model]')"
    wait_until(page, f"{models}.innerText.includes('EOS R5')")
    assert _facet(page, "camera_model") == {"EOS R5": 6}
    # Its own facet still counts every make (it leaves its own filter out).
    assert _facet(page, "camera_make") == {"Canon": 6, "Apple": 6, "Sony": 6}
    pressed = page.locator('#facets [data-facet="camera_make"] button[aria-pressed="true"]')
    assert pressed.inner_text().startswith("Canon")
    shot("canon")

    # A year on top: the two filters combine, and a link reproduces the state.
    year = page.locator('#facets [data-facet="year"] button').first
    year_count = int(year.locator(".count").inner_text())
    year.click()
    page.wait_for_url(re.compile(r"taken_after=\d{4}-01-01"))
    wait_until(page, f"document.querySelectorAll('#grid .tile').length === {year_count}")
    page.go_back()
    page.wait_for_url(re.compile(r"/\?camera_make=Canon$"))
    wait_until(page, "document.querySelectorAll('#grid .tile').length === 6")
    page.go_back()
    wait_until(page, "document.querySelectorAll('#grid .tile').length === 18")

    # Selection: click toggles, shift-click takes the range, "all matching", clear.
    ids = _tile_ids(page)
    grid.nth(1).click()
    grid.nth(5).click(modifiers=["Shift"])
    assert page.evaluate("[...window.vitdex.selection.ids()]") == ids[1:6]
    assert page.locator("#selection-count").inner_text() == "5 selected"
    assert grid.nth(3).get_attribute("aria-pressed") == "true"
    grid.nth(3).click()
    assert _selected(page) == 4 and grid.nth(3).get_attribute("aria-pressed") == "false"
    # Keyboard: arrows move, Space toggles.
    grid.nth(3).focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Space")
    assert ids[4] not in page.evaluate("[...window.vitdex.selection.ids()]")
    shot("selected-range")
    page.get_by_role("button", name="Select all matching").click()
    wait_until(page, "window.vitdex.selection.ids().size === 18")
    wait_until(page, "document.querySelectorAll('#grid .tile.selected').length === 18")
    shot("all-selected")
    page.get_by_role("button", name="Clear selection").click()
    assert _selected(page) == 0 and page.locator("#selection-count").is_hidden()

    # A misspelt make: nothing matches, and the page says what exists.
    page.goto(site.url + "/?camera_make=Canonn")
    page.locator("#notes").wait_for()
    assert "Canon" in page.locator("#notes").inner_text()
    assert page.locator("#empty").is_visible() and grid.count() == 0
    shot("filter-note")


def test_failed_files_show_their_reason(site: Site, page: Any, shot: Shot) -> None:
    (site.photos / "2024" / "broken.jpg").write_bytes(b"\xff\xd8 this is no JPEG")
    site.cli("index", str(site.photos), check=False)
    page.goto(site.url + "/")
    page.locator('#facets [data-facet="status"] button', has_text="failed").click()
    page.wait_for_url(re.compile(r"status=failed"))
    failed = page.locator("#grid .tile.tile-failed")
    failed.first.wait_for()
    assert failed.count() == 1 and page.locator("#grid img").count() == 0
    text = failed.inner_text()
    assert "broken.jpg" in text and str(site.photos) in text
    assert len(text.split("\n")) >= 3  # name, path, reason
    shot("failed")


def test_photo_neighbours_and_prev_next(site: Site, page: Any, shot: Shot) -> None:
    page.goto(site.url + "/?camera_make=Sony")
    wait_until(page, "document.querySelectorAll('#grid .tile').length === 6")
    order = _tile_ids(page)
    page.locator("#grid .tile").first.focus()
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(rf"/photos/{order[0]}\?camera_make=Sony$"))
    page.locator("#meta dt").first.wait_for()
    meta = page.locator("#meta").inner_text()
    assert "Sony A7 IV" in meta and "160 × 120" in meta and str(site.photos) in meta
    assert page.locator("#labels tbody tr").count() > 0
    wait_until(page, "document.querySelectorAll('#neighbours .tile').length === 12")
    scores = [float(s) for s in page.locator("#neighbours .badge").all_inner_texts()]
    assert scores == sorted(scores, reverse=True)
    assert page.locator("#position").inner_text() == "1 of 6"
    assert page.locator("#prev").is_hidden() and page.locator("#next").is_visible()
    wait_until(page, "document.getElementById('large').naturalWidth > 0")
    shot("photo")

    page.keyboard.press("ArrowRight")
    page.wait_for_url(re.compile(rf"/photos/{order[1]}\?camera_make=Sony$"))
    wait_until(page, "document.getElementById('position').textContent === '2 of 6'")
    page.keyboard.press("ArrowLeft")
    page.wait_for_url(re.compile(rf"/photos/{order[0]}\?camera_make=Sony$"))

    # Another space, fewer neighbours.
    page.locator("#neighbours .tile").first.wait_for()
    page.locator("#k").fill("5")
    page.locator("#space").select_option("cls@2")
    wait_until(page, "document.querySelectorAll('#neighbours .tile').length === 5")
    page.get_by_role("button", name="Add to selection").click()
    assert page.evaluate("[...window.vitdex.selection.ids()]") == [order[0]]
    shot("photo-space-2")

    page.get_by_role("link", name="Use as query").click()
    page.wait_for_url(re.compile(rf"/search\?image_id={order[0]}"))
    wait_until(page, "document.querySelectorAll('#results .tile').length > 0")
    shot("use-as-query")

    page.watch.allow(r"/photos/999999$", 404)
    answer = page.goto(site.url + "/photos/999999")
    assert answer is not None and answer.status == 404
    assert page.get_by_role("heading", name="No photo 999999").is_visible()
    shot("not-found")


def test_search_by_upload_pages_and_min_score(site: Site, page: Any, shot: Shot) -> None:
    page.goto(site.url + "/search")
    page.locator("#space option").first.wait_for(state="attached")
    page.locator("#k").fill("5")
    photo = sorted(site.photos.rglob("*.jpg"))[3]
    page.set_input_files("#file", str(photo))
    results = page.locator("#results .tile")
    wait_until(page, "document.querySelectorAll('#results .tile').length === 5")
    assert page.locator("#query-preview").is_visible()
    assert page.locator("#query-name").inner_text() == photo.name
    # The query's own file is in the catalog: it comes first, with the top score.
    first_title = results.first.get_attribute("title") or ""
    assert first_title.startswith(str(photo))
    shot("search")

    page.get_by_role("button", name="More results").click()
    wait_until(page, "document.querySelectorAll('#results .tile').length === 10")
    scores = [float(s) for s in results.evaluate_all("ts => ts.map(t => t.dataset.score)")]
    assert scores == sorted(scores, reverse=True) and len(set(_tile_ids(page, "#results"))) == 10

    # A minimum score hides what falls below it; the server has nothing more above it.
    cut = scores[4]
    page.locator("#min-score").fill(str(cut))
    visible = page.locator("#results .tile-cell:not([hidden])")
    assert visible.count() == sum(1 for s in scores if s >= cut)
    assert page.locator("#results .tile-cell[hidden]").count() == sum(1 for s in scores if s < cut)
    page.get_by_role("button", name="More results").click()
    wait_until(page, "document.getElementById('more').hidden")
    assert results.count() == 10
    assert "below the minimum" in page.locator("#end").inner_text()
    shot("min-score")

    # Results select like the grid.
    results.nth(0).click()
    results.nth(2).click(modifiers=["Shift"])
    assert _selected(page) == 3
    shot("search-selected")
