"""Heads in chromium: train a head from tags on the page, read its report, apply it, correct
an uncertain photo by keyboard (and undo it), and filter the library by a head's label."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import Site, wait_until
from tests.helpers import served
from tests.integration.test_heads_api import PER_CLASS, make_kinds_library

pytestmark = pytest.mark.slow

Shot = Callable[[str], Path]


@pytest.fixture
def kinds_site(vitdex_env: dict[str, str], tmp_path: Path) -> Iterator[Site]:
    """Reddish ``cats``, bluish ``dogs`` and two grey ``misc`` photos, indexed, served
    without API keys, the first two tagged ``cat`` and ``dog``."""
    photos = make_kinds_library(tmp_path / "photos")
    env = {
        **vitdex_env,
        "VITDEX_ALLOWED_ROOTS": str(photos),
        "NO_COLOR": "1",
        "HF_HUB_OFFLINE": "1",
    }
    site = Site("", env, photos, tmp_path / "serve.log")
    site.cli("index", str(photos))
    with served(env, log=site.log, start_timeout=90) as url:
        site.url = url
        with httpx.Client(base_url=url + "/api/v1", timeout=60) as api:
            for tag, folder in (("cat", "cats"), ("dog", "dogs")):
                body = {"filter": {"folder": str(photos / "kinds" / folder)}}
                assert api.post(f"/tags/{tag}/images", json=body).json()["added"] == PER_CLASS
        yield site


def _text(page: Any, selector: str, expected: str) -> None:
    wait_until(
        page,
        "([s, t]) => document.querySelector(s)?.textContent.trim() === t",
        [selector, expected],
    )


def _focused(page: Any) -> int:
    return int(
        page.locator('#review-items .head-item[aria-current="true"]').get_attribute("data-id")
    )


def _thumbs_loaded(page: Any, selector: str) -> None:
    wait_until(
        page,
        "(s) => [...document.querySelectorAll(s)].every((i) => i.complete && i.naturalWidth > 0)",
        selector,
    )


def test_train_review_correct_and_filter(kinds_site: Site, page: Any, shot: Shot) -> None:
    api = httpx.Client(base_url=kinds_site.url + "/api/v1", timeout=60)

    # The list is empty; the form offers the tags with their counts.
    page.goto(f"{kinds_site.url}/heads")
    page.get_by_text("No heads yet: train one below.").wait_for()
    wait_until(page, "document.querySelectorAll('#head-tags option').length === 2")
    assert page.locator("#head-tags option").all_inner_texts() == ["cat (8)", "dog (8)"]
    assert page.locator("#head-space option").count() == 2
    shot("empty")

    # Nothing chosen: the page says what is missing. A folder that does not exist is
    # refused before a job is queued, and the reason is shown.
    page.fill("#head-name", "kind")
    page.get_by_role("button", name="Train").click()
    page.locator("#toasts .toast.bad", has_text="Choose the tags to learn").wait_for()
    page.get_by_label("A folder (one class per subfolder)").check()
    page.fill("#head-folder", str(kinds_site.photos / "nowhere"))
    page.watch.allow(r"/api/v1/heads$", 400)
    page.get_by_role("button", name="Train").click()
    page.locator("#toasts .toast.bad", has_text="no such folder").wait_for()
    assert page.locator("#head-progress").is_hidden()
    assert api.get("/heads").json() == {"heads": []}

    # Train from both tags: the job's progress, then the head's page opens.
    page.get_by_label("Tags (one class per tag)").check()
    page.select_option("#head-tags", ["cat", "dog"])
    page.get_by_role("button", name="Train").click()
    page.wait_for_url(re.compile(r"/heads/kind$"))
    head = api.get("/heads/kind").json()
    _text(page, "#head-accuracy", f"{head['report']['accuracy'] * 100:.1f}%")
    assert page.locator("#head-title").inner_text() == "kind"
    assert page.locator("#head-source").inner_text() == "from tags: cat, dog"
    rows = page.locator("#head-classes tbody tr")
    assert rows.count() == 2
    first = head["report"]["classes"][0]
    assert rows.first.locator("th").inner_text() == first["name"]
    assert rows.first.locator("td").nth(3).inner_text() == str(first["support"])
    # The confusion matrix: a grid of counts, the diagonal shaded as hits.
    cells = page.locator("#head-confusion tbody td.cell")
    assert [int(c) for c in cells.all_inner_texts()] == [
        n for row in head["report"]["confusion"] for n in row
    ]
    assert page.locator("#head-confusion tbody td.hit").count() == 2
    page.get_by_text("Not applied yet").wait_for()
    page.get_by_text("No labels yet: apply the head to the library first.").wait_for()
    shot("report")

    # Apply: the counts link to the library, and the least certain photos come first.
    page.get_by_role("button", name="Apply to library").click()
    wait_until(page, "document.querySelectorAll('#review-items .head-item').length === 18")
    page.locator("#toasts").get_by_text("Labelled 18 photos.").wait_for()
    counts = api.get("/heads/kind").json()["label_counts"]
    links = page.locator("#head-counts a")
    assert links.count() == 2
    assert links.first.get_attribute("href") == "/?head_label=kind%3Acat"
    assert links.first.locator(".count").inner_text() == str(counts["cat"])
    _thumbs_loaded(page, "#review-items img")
    shot("applied")

    # The first photo is in focus; j moves on, k back; 2 sets the focused photo to "dog".
    listing = api.get("/heads/kind/labels", params={"limit": 24}).json()["items"]
    assert [
        int(i)
        for i in page.locator("#review-items .head-item").evaluate_all(
            "ns => ns.map(n => n.dataset.id)"
        )
    ] == [i["image_id"] for i in listing]
    assert _focused(page) == listing[0]["image_id"]
    page.keyboard.press("j")
    assert _focused(page) == listing[1]["image_id"]
    page.keyboard.press("k")
    assert _focused(page) == listing[0]["image_id"]
    target = listing[0]
    key, label = ("2", "dog") if target["label"] == "cat" else ("1", "cat")
    page.keyboard.press(key)
    card = page.locator(f'#review-items .head-item[data-id="{target["image_id"]}"]')
    card.locator(".head-corrected").wait_for()
    assert "corrected" in (card.get_attribute("class") or "")
    assert card.locator(".head-label").inner_text() == label
    wait_until(
        page,
        "(id) => document.querySelector('[aria-current=true]').dataset.id != id",
        target["image_id"],
    )
    assert _focused(page) == listing[1]["image_id"]  # on to the next photo
    fixed = api.get("/heads/kind/labels", params={"source": "corrected"}).json()["items"]
    assert [(i["image_id"], i["label"]) for i in fixed] == [(target["image_id"], label)]
    wait_until(page, "document.querySelector('#head-facts').textContent.includes('1 correction')")
    shot("corrected")

    # u takes the correction back: the head predicts the photo again at once.
    page.keyboard.press("u")
    page.locator("#toasts").get_by_text(f"is {target['label']} again").wait_for()
    assert api.get("/heads/kind/labels", params={"source": "corrected"}).json()["total"] == 0
    assert card.locator(".head-label").inner_text() == target["label"]
    assert "corrected" not in (card.get_attribute("class") or "").split()
    # ...and a second correction sticks.
    page.keyboard.press(key)
    card.locator(".head-corrected").wait_for()
    assert api.get("/heads/kind/labels", params={"source": "corrected"}).json()["total"] == 1
    page.keyboard.press("?")
    assert page.locator("#review-keys-list").is_hidden()
    page.keyboard.press("?")
    assert page.locator("#review-keys-list").is_visible()

    # The list of heads shows it, with its accuracy.
    page.goto(f"{kinds_site.url}/heads")
    row = page.locator('#head-table tr[data-head="kind"]')
    row.wait_for()
    assert row.locator("td").nth(3).inner_text() == f"{head['report']['accuracy'] * 100:.1f}%"
    assert row.locator("td").nth(4).inner_text() == "18"
    shot("list")

    # The library: a Heads facet with each label's count; a click filters by it.
    dogs = api.get("/heads/kind").json()["label_counts"]["dog"]
    page.goto(kinds_site.url + "/")
    facet = page.locator('#facets [data-facet="head_label"]')
    facet.wait_for()
    assert facet.locator("h4").inner_text() == "kind"
    facet.get_by_role("button", name=re.compile("^dog")).click()
    page.wait_for_url(re.compile(r"/\?head_label=kind%3Adog$"))
    wait_until(page, "(n) => document.querySelectorAll('#grid .tile').length === n", dogs)
    assert page.locator("#total").inner_text() == f"{dogs} photos"
    chip = page.locator("#active-filters").get_by_role("button", name="head label: kind:dog ✕")
    assert chip.is_visible()
    assert (
        facet.get_by_role("button", name=re.compile("^dog")).get_attribute("aria-pressed") == "true"
    )
    shot("library-filtered")
    # Choosing the other label of the same head replaces it; the chip removes it.
    page.locator('#facets [data-facet="head_label"]').get_by_role(
        "button", name=re.compile("^cat")
    ).click()
    page.wait_for_url(re.compile(r"/\?head_label=kind%3Acat$"))
    page.locator("#active-filters").get_by_role("button", name="head label: kind:cat ✕").click()
    page.wait_for_url(re.compile(r"/$"))
    wait_until(page, "document.querySelectorAll('#grid .tile').length === 18")

    # A label count on the head's page opens the same filtered library.
    page.goto(f"{kinds_site.url}/heads/kind")
    page.locator("#head-counts a", has_text="dog").click()
    page.wait_for_url(re.compile(r"/\?head_label=kind%3Adog$"))
    wait_until(page, "(n) => document.querySelectorAll('#grid .tile').length === n", dogs)

    # An unknown head is a friendly 404 page.
    page.watch.allow(r"/heads/nope$", 404)
    response = page.goto(f"{kinds_site.url}/heads/nope")
    assert response.status == 404
    page.get_by_text("No head “nope”").wait_for()
