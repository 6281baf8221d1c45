"""The map page (compute, draw, box-select) and the clusters pages (run, open, select)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import Site, wait_until

pytestmark = pytest.mark.slow

#: Pixels of the canvas that differ from its top-left corner (the background).
DRAWN = """() => {
  const c = document.getElementById('map-canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4)
    if (d[i] !== d[0] || d[i + 1] !== d[1] || d[i + 2] !== d[2]) n++;
  return n;
}"""


def test_map_computes_draws_and_selects(site: Site, page: Any, shot: Callable[[str], Path]) -> None:
    page.goto(f"{site.url}/map")
    page.get_by_text("No map yet: compute it.").wait_for()
    assert page.evaluate(DRAWN) == 0
    shot("no-map")

    page.get_by_role("button", name="Compute map").click()
    page.get_by_role("button", name="Recompute map").wait_for()
    assert page.locator("#map-count").inner_text() == "18"
    assert page.evaluate(DRAWN) > 50
    assert page.locator("#map-legend li").count() >= 1

    # Hovering a point shows its photo: find where the page put the first point (the map
    # spans the canvas's shorter side less 16 px each way, y up, centred).
    box = page.locator("#map-canvas").bounding_box()
    first = page.evaluate("""async () => {
      const m = await (await fetch('/api/v1/maps/cls')).json();
      const c = document.getElementById('map-canvas');
      const s = Math.min(c.clientWidth, c.clientHeight) - 32;
      return [m.ids[0], c.clientWidth / 2 + (m.x[0] - 0.5) * s,
              c.clientHeight / 2 - (m.y[0] - 0.5) * s]; }""")
    page.mouse.move(box["x"] + first[1], box["y"] + first[2])
    card = page.locator("#map-hover")
    card.wait_for()
    assert card.locator("span").inner_text().startswith(f"#{first[0]}")
    wait_until(page, "document.querySelector('#map-hover img').naturalWidth > 0")
    shot("drawn")

    # A box over the whole map selects every point into the shared selection.
    page.mouse.move(box["x"] + 3, box["y"] + 3)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=5)
    page.mouse.move(box["x"] + box["width"] - 3, box["y"] + box["height"] - 3, steps=5)
    shot("dragging")
    page.mouse.up()
    count = page.locator("#selection-count")
    count.wait_for()
    assert count.inner_text() == "18 selected"
    assert page.locator("#map-picked").inner_text() == "18"
    shot("selected")

    # A smaller box, with the keyboard-free zoom buttons in between, picks fewer.
    page.get_by_role("button", name="Clear selection").click()
    assert count.is_hidden()
    page.get_by_role("button", name="Zoom in").click()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + 3)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] - 3, box["y"] + box["height"] - 3, steps=8)
    page.mouse.up()
    picked = int(page.locator("#map-picked").inner_text())
    assert 0 < picked < 18
    assert count.inner_text() == f"{picked} selected"

    ids = page.evaluate("JSON.parse(sessionStorage.getItem('vitdex.selection'))")
    assert len(ids) == picked
    page.get_by_role("button", name="Reset view").click()
    page.get_by_role("button", name="Select all in view").click()
    assert count.inner_text() == "18 selected"

    # A lasso around the canvas's edges takes every point too.
    page.get_by_role("button", name="Clear selection").click()
    page.get_by_role("button", name="Lasso").click()
    corners = [(3, 3), (box["width"] - 3, 3), (box["width"] - 3, box["height"] - 3)]
    corners.append((3, box["height"] - 3))
    page.mouse.move(box["x"] + corners[0][0], box["y"] + corners[0][1])
    page.mouse.down()
    for cx, cy in [*corners[1:], corners[0]]:
        page.mouse.move(box["x"] + cx, box["y"] + cy, steps=4)
    page.mouse.up()
    assert count.inner_text() == "18 selected"

    # The selection carries over to the library grid.
    page.get_by_role("link", name="Open the selection in the library").click()
    page.wait_for_url(f"{site.url}/")
    page.locator("#selection-count").wait_for()
    assert page.locator("#selection-count").inner_text() == "18 selected"


def test_clusters_run_open_and_select(site: Site, page: Any, shot: Callable[[str], Path]) -> None:
    page.goto(f"{site.url}/clusters")
    page.get_by_text("No clustering yet").wait_for()
    # A tag no photo carries: the failed job says so, and no run is made.
    page.fill("#cluster-tags", "no such tag")
    page.get_by_role("button", name="Start clustering").click()
    page.get_by_text("no photo has tag 'no such tag'").wait_for()
    page.fill("#cluster-tags", "")
    page.fill("#cluster-k", "3")
    page.get_by_role("button", name="Start clustering").click()
    page.get_by_role("link", name="Open run 1").wait_for()
    rows = page.locator("#cluster-runs tbody tr")
    assert rows.count() == 1
    assert rows.first.locator("td").nth(3).inner_text() == "3"
    shot("runs")

    page.get_by_role("link", name="Open run 1").click()
    page.wait_for_url(f"{site.url}/clusters/1")
    cards = page.locator(".cluster-card")
    cards.first.wait_for()
    assert cards.count() == 3
    sizes = [int(c.split()[0]) for c in cards.locator(".muted").all_inner_texts()]
    assert sum(sizes) == 18 and sizes == sorted(sizes, reverse=True)
    cards.first.click()
    tiles = page.locator("#members-grid .tile")
    tiles.first.wait_for()
    assert tiles.count() == sizes[0]
    assert page.locator("#members-range").inner_text() == f"1–{sizes[0]} of {sizes[0]}"
    tiles.first.click()
    assert page.locator("#selection-count").inner_text() == "1 selected"
    assert tiles.first.get_attribute("aria-selected") == "true"
    page.get_by_role("button", name="Select the whole cluster").click()
    wait_until(
        page, f"document.getElementById('selection-count').textContent === '{sizes[0]} selected'"
    )
    shot("cluster-open")

    # Keyboard: the second card opens with Enter after an arrow key.
    cards.first.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")
    wait_until(page, f"document.querySelectorAll('#members-grid .tile').length === {sizes[1]}")
    assert cards.nth(1).get_attribute("aria-expanded") == "true"

    # The run colours the map.
    page.get_by_role("link", name="Show on the map").click()
    page.wait_for_url(f"{site.url}/map?space=cls&cluster_run=1")
    page.get_by_role("button", name="Compute map").click()
    page.get_by_role("button", name="Recompute map").wait_for()
    legend = page.locator("#map-legend li")
    legend.first.wait_for()
    assert legend.all_inner_texts()[0].startswith("cluster 0")
    assert page.evaluate(DRAWN) > 50
    shot("map-by-cluster")
