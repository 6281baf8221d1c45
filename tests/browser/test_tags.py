"""Tags in chromium: tag a selection from the header, filter the library by the tag facet,
add and remove tags on a photo's page, rename and delete on the tags page."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.browser.conftest import Site, wait_until

Shot = Callable[[str], Path]


def _tiles(page: Any) -> str:
    return "document.querySelectorAll('#grid .tile').length"


def _toast(page: Any, text: str) -> None:
    page.locator("#toasts .toast", has_text=text).first.wait_for()


def _tag_facet(page: Any) -> dict[str, int]:
    buttons = page.locator('#facets [data-facet="tag"] li button')
    out = {}
    for button in buttons.all():
        value = button.locator(".facet-value").inner_text()
        out[value] = int(button.locator(".count").inner_text().replace(",", ""))
    return out


def test_tag_selection_filter_and_rename(site: Site, page: Any, shot: Shot) -> None:
    page.goto(site.url + "/")
    wait_until(page, f"{_tiles(page)} === 18")
    tag_button = page.locator("#tag-selection")
    assert tag_button.is_hidden()  # nothing selected: nothing to tag

    # Select four photos (click, then shift-click a range): the header offers "Tag…".
    grid = page.locator("#grid .tile")
    grid.nth(0).click()
    grid.nth(2).click()
    grid.nth(4).click(modifiers=["Shift"])
    chosen = sorted(page.evaluate("[...window.vitdex.selection.ids()]"))
    assert len(chosen) == 4
    tag_button.wait_for()
    tag_button.click()
    dialog = page.locator("dialog#tagger")
    dialog.wait_for()
    assert "4 photos selected" in dialog.inner_text()
    page.locator("#tagger-name").fill("Best of 2024")
    shot("tag-dialog")
    page.locator("#tagger-add").click()
    _toast(page, "tagged 4 photos “Best of 2024”")
    assert dialog.is_hidden()
    # The sidebar counts it at once.
    wait_until(page, "!!document.querySelector('#facets [data-facet=tag]')")
    assert _tag_facet(page) == {"Best of 2024": 4}

    # Again with another case: nothing new, and the toast says so.
    tag_button.click()
    page.locator("#tagger-name").fill("best OF 2024")
    page.locator("#tagger-add").click()
    _toast(page, "all 4 photos already had “Best of 2024”")

    # Filter by the tag facet: the grid holds exactly those photos; the URL says so.
    page.locator('#facets [data-facet="tag"] button', has_text="Best of 2024").click()
    page.wait_for_url(re.compile(r"/\?tag=Best\+of\+2024$"))
    wait_until(page, f"{_tiles(page)} === 4")
    grid_ids = sorted(int(i) for i in grid.evaluate_all("ts => ts.map(t => t.dataset.id)"))
    assert grid_ids == chosen
    assert page.locator("#total").inner_text() == "4 photos"
    assert "tag: Best of 2024" in page.locator("#active-filters").inner_text()
    shot("filtered-by-tag")

    # Remove the tag from two of them through the same dialog: the grid follows.
    page.get_by_role("button", name="Clear selection").click()
    assert tag_button.is_hidden()
    grid.nth(0).click()
    grid.nth(1).click()
    tag_button.click()
    page.locator("#tagger-name").fill("best of 2024")
    page.locator("#tagger-remove").click()
    _toast(page, "removed “Best of 2024” from 2 photos")
    wait_until(page, f"{_tiles(page)} === 2")
    best = {int(i) for i in grid.evaluate_all("ts => ts.map(t => t.dataset.id)")}
    assert len(best) == 2 and best < set(chosen)

    # A photo's page: its tags as chips; add one, remove one.
    photo_id = min(best)
    page.goto(f"{site.url}/photos/{photo_id}")
    chips = page.locator("#tags .tag-chip")
    chips.first.wait_for()
    assert page.locator("#tags a").all_inner_texts() == ["Best of 2024"]
    page.locator("#tag-input").fill("Rex")
    page.locator("#tag-form button[type=submit]").click()
    _toast(page, "tagged “Rex”")
    wait_until(page, "document.querySelectorAll('#tags .tag-chip').length === 2")
    assert page.locator("#tags a").all_inner_texts() == ["Best of 2024", "Rex"]
    shot("photo-tags")
    page.get_by_role("button", name="Remove tag Rex").click()
    wait_until(page, "document.querySelectorAll('#tags .tag-chip').length === 1")

    # The tags page: counts, links to the filtered library, rename (a merge) and delete.
    other = min(set(chosen) - best)  # untagged "Best of 2024" above
    site.cli("tag", "add", "Holiday", "--id", str(photo_id), "--id", str(other))
    page.goto(site.url + "/tags")
    rows = page.locator("#tag-table tbody tr")
    wait_until(page, "document.querySelectorAll('#tag-table tbody tr').length === 3")
    table = [r.split("\t")[:2] for r in rows.all_inner_texts()]
    assert table == [["Best of 2024", "2"], ["Holiday", "2"], ["Rex", "0"]], table
    link = page.locator("#tag-table a", has_text="Holiday")
    assert link.get_attribute("href") == "/?tag=Holiday"
    shot("tags-page")

    page.get_by_role("button", name="Rename Holiday").click()
    page.get_by_label("New name for Holiday").fill("best of 2024")
    shot("renaming")
    page.get_by_role("button", name="Save").click()
    _toast(page, "merged “Holiday” into “Best of 2024”")
    wait_until(page, "document.querySelectorAll('#tag-table tbody tr').length === 2")
    merged = best | {other}
    table = [r.split("\t")[:2] for r in rows.all_inner_texts()]
    assert table == [["Best of 2024", str(len(merged))], ["Rex", "0"]], table

    page.get_by_role("button", name="Rename Rex").click()
    page.get_by_label("New name for Rex").fill("Rexie")
    page.keyboard.press("Enter")
    _toast(page, "renamed “Rex” to “Rexie”")
    page.locator("#tag-table a", has_text="Rexie").wait_for()

    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name="Delete Rexie").click()
    _toast(page, "deleted “Rexie”")
    wait_until(page, "document.querySelectorAll('#tag-table tbody tr').length === 1")
    shot("tags-after")

    # The library link of a tag opens the filtered grid.
    page.locator("#tag-table a", has_text="Best of 2024").click()
    page.wait_for_url(re.compile(r"/\?tag=Best"))
    wait_until(page, f"{_tiles(page)} === {len(merged)}")
    assert {int(i) for i in grid.evaluate_all("ts => ts.map(t => t.dataset.id)")} == merged

    # Hide marked duplicates: the switch goes into the URL (no duplicates are marked).
    page.goto(site.url + "/")
    wait_until(page, f"{_tiles(page)} === 18")
    page.get_by_label("Hide marked duplicates").check()
    page.wait_for_url(re.compile(r"hide_duplicates=true"))
    wait_until(page, f"{_tiles(page)} === 18")
    assert "duplicates hidden" in page.locator("#active-filters").inner_text()
