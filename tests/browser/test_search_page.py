"""The search page with several examples: liked and disliked photos in one query, a
minimum score paged past k, and saved searches saved and loaded again."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.browser.conftest import Site, wait_until

Shot = Callable[[str], Path]


def _tiles(page: Any) -> list[tuple[int, float]]:
    """The result tiles' ids and scores, in grid order, with the score each tile shows."""
    got = page.locator("#results .tile").evaluate_all(
        "ts => ts.map(t => [Number(t.dataset.id), t.querySelector('.badge').textContent,"
        " Number(t.dataset.score)])"
    )
    for _, badge, score in got:
        assert badge == f"{score:.3f}", (badge, score)  # each tile shows its score
    return [(int(i), float(s)) for i, _, s in got]


def _similar(site: Site, body: dict[str, Any], **params: Any) -> dict[str, Any]:
    answer = httpx.post(f"{site.url}/api/v1/similar", json=body, params=params, timeout=60)
    assert answer.status_code == 200, answer.text
    out: dict[str, Any] = answer.json()
    return out


def _add_id(page: Any, image_id: int) -> None:
    page.locator("#add-id").fill(str(image_id))
    page.get_by_role("button", name="Add", exact=True).click()


def test_examples_cut_off_and_saved_searches(site: Site, page: Any, shot: Shot) -> None:
    images = httpx.get(f"{site.url}/api/v1/images", params={"limit": 100}).json()["images"]
    a, b, c = (img["id"] for img in images[:3])
    page.goto(site.url + "/search")
    page.locator("#space option").first.wait_for(state="attached")
    page.locator("#saved option").first.wait_for(state="attached")
    page.locator("#k").fill("6")

    # Two examples: the second switched to negative ("less like this").
    _add_id(page, a)
    wait_until(page, "document.querySelectorAll('#results .tile').length === 6")
    _add_id(page, b)
    page.locator("#examples li").nth(1).wait_for()
    page.get_by_role("button", name=f"Photo #{b}: positive example, switch").click()
    assert page.locator("#examples .example.negative").count() == 1
    want = _similar(site, {"image_ids": [a], "negative_ids": [b]}, k=6)
    expected = [(h["image_id"], h["score"]) for h in want["hits"]]
    wait_until(
        page,
        "want => JSON.stringify([...document.querySelectorAll('#results .tile')]"
        ".map(t => Number(t.dataset.id))) === JSON.stringify(want)",
        [i for i, _ in expected],
    )
    assert _tiles(page) == expected
    assert a not in [i for i, _ in expected] and b not in [i for i, _ in expected]
    shot("positive-negative")

    # A minimum score: pages of 6 past the first, until the scores drop under it.
    everything = _similar(site, {"image_ids": [a], "negative_ids": [b]}, k=100)["hits"]
    assert len(everything) > 12
    cut = round((everything[9]["score"] + everything[10]["score"]) / 2, 4)
    page.locator("#min-score").fill(str(cut))
    page.get_by_role("button", name="Search again").click()
    wait_until(page, "document.querySelectorAll('#results .tile').length === 6")
    assert page.get_by_role("button", name="More results").is_visible()
    page.get_by_role("button", name="More results").click()
    wait_until(page, "document.getElementById('more').hidden")
    got = _tiles(page)
    assert got == [(h["image_id"], h["score"]) for h in everything[:10]]
    assert "below the minimum" in page.locator("#end").inner_text()
    assert f"score ≥ {cut:.3f}" in page.locator("#summary").inner_text()
    shot("min-score-load-more")

    # Save it under a name (asked in a prompt), then load it in a fresh page.
    page.once("dialog", lambda dialog: dialog.accept("not b"))
    page.get_by_role("button", name="Save search…").click()
    wait_until(page, "document.querySelector('#toasts')?.textContent.includes('Saved search')")
    saved = httpx.get(f"{site.url}/api/v1/saved-searches").json()["saved_searches"]
    assert [s["name"] for s in saved] == ["not b"]
    query = saved[0]["query"]
    assert (query["image_ids"], query["negative_ids"], query["min_score"], query["k"]) == (
        [a],
        [b],
        cut,
        6,
    )
    shot("saved")

    page.goto(site.url + "/search")
    page.locator("#saved option").nth(1).wait_for(state="attached")
    assert page.locator("#results .tile").count() == 0
    page.locator("#saved").select_option(label="not b")
    wait_until(page, "document.querySelectorAll('#results .tile').length === 6")
    assert page.locator("#examples .example").count() == 2
    assert page.locator("#examples .example.negative").count() == 1
    assert page.locator("#min-score").input_value() == str(cut)
    page.get_by_role("button", name="More results").click()
    wait_until(page, "document.getElementById('more').hidden")
    assert _tiles(page) == got
    shot("saved-loaded")

    # The selection as positives; an uploaded photo cannot be saved.
    page.evaluate("ids => window.vitdex.selection.set(ids)", [c])
    page.get_by_role("button", name="Search with the selection").click()
    page.locator(f'#examples li[data-id="{c}"]').wait_for()
    assert page.locator("#examples .example").count() == 3
    page.set_input_files("#file", str(sorted(site.photos.rglob("*.jpg"))[5]))
    page.locator("#examples .example").nth(3).wait_for()
    page.get_by_role("button", name="Save search…").click()
    wait_until(page, "document.querySelector('#toasts')?.textContent.includes('cannot be saved')")
    shot("upload-not-saved")
