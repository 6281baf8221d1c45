"""The duplicates page: scan from the page, review groups by keyboard and mouse, undo."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import Site, wait_until
from tests.helpers import served
from tests.photos import make_photo

pytestmark = pytest.mark.slow

Shot = Callable[[str], Path]


def make_duplicates_library(root: Path) -> Path:
    """Eight distinct photos, plus planted copies.

    Exact: ``d00`` twice more (a group of three), ``d01`` once more (two). Near: ``d02``
    drawn smaller and saved at a lower JPEG quality, ``d03`` saved at a lower quality.
    """
    originals = root / "originals"
    for i in range(8):
        make_photo(
            originals / f"d{i:02d}.jpg",
            size=(320, 240),
            seed=100 + i,
            taken_at=datetime(2024, 1 + i, 1, 12, 0, 0),
            camera=("Canon", "EOS R5"),
        )
    copies = root / "copies"
    (copies / "backup").mkdir(parents=True)
    shutil.copyfile(originals / "d00.jpg", copies / "d00-copy.jpg")
    shutil.copyfile(originals / "d00.jpg", copies / "backup" / "d00.jpg")
    shutil.copyfile(originals / "d01.jpg", copies / "d01-copy.jpg")
    near = root / "near"
    make_photo(near / "d02-small.jpg", size=(200, 150), seed=102, quality=60)
    make_photo(near / "d03-q40.jpg", size=(320, 240), seed=103, quality=40)
    return root


@pytest.fixture
def dup_site(vitdex_env: dict[str, str], tmp_path: Path) -> Iterator[Site]:
    """The library above, indexed and served without API keys."""
    photos = make_duplicates_library(tmp_path / "photos")
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
        yield site


#: Near copies here score 0.9999+ against their original in space ``cls``, while distinct
#: photos of this tiny model reach 0.96: scan at 0.99.
THRESHOLD = "0.99"

#: The planted groups, by path under the library (exact ones first).
PLANTED = [
    {"originals/d00.jpg", "copies/d00-copy.jpg", "copies/backup/d00.jpg"},
    {"originals/d01.jpg", "copies/d01-copy.jpg"},
    {"originals/d02.jpg", "near/d02-small.jpg"},
    {"originals/d03.jpg", "near/d03-q40.jpg"},
]


def _text(page: Any, selector: str, expected: str) -> None:
    """Wait until ``selector``'s text is ``expected``."""
    wait_until(
        page,
        "([s, t]) => document.querySelector(s)?.textContent.trim() === t",
        [selector, expected],
    )


def _focused_id(page: Any) -> int:
    return int(page.locator('#dup-list .dup-item[aria-current="true"]').get_attribute("data-id"))


def _thumbs_loaded(page: Any) -> None:
    wait_until(
        page,
        "[...document.querySelectorAll('#dup-members img')]"
        ".every((i) => i.complete && i.naturalWidth > 0)",
    )


def test_scan_review_undo_and_page(dup_site: Site, page: Any, shot: Shot) -> None:
    api = httpx.Client(base_url=dup_site.url + "/api/v1", timeout=60)
    root = dup_site.photos

    def rel(path: str) -> str:
        return Path(path).relative_to(root).as_posix()

    page.goto(f"{dup_site.url}/duplicates")
    page.get_by_text("No duplicate groups yet: run a scan.").wait_for()
    wait_until(page, "document.querySelectorAll('#dup-space option').length === 2")
    # The form shows the server's default threshold.
    assert page.input_value("#dup-threshold") == page.locator("#dup").get_attribute(
        "data-threshold"
    )
    shot("empty")

    # Scan from the page: the job's progress, then the groups.
    page.select_option("#dup-space", "cls")
    page.fill("#dup-threshold", THRESHOLD)
    page.get_by_role("button", name="Scan for duplicates").click()
    page.locator("#dup-progress").get_by_text("done: 4 groups found, 4 new").wait_for()
    _text(page, "#count-open", "4")
    assert page.locator("#dup-list .dup-item").count() == 4
    assert page.locator("#dup-range").inner_text() == "Groups 1–4 of 4"
    found = api.get("/duplicates", params={"status": "open"}).json()
    assert found["total"] == 4
    assert sorted(
        ({rel(m["path"]) for m in g["members"]} for g in found["groups"]), key=sorted
    ) == (sorted(PLANTED, key=sorted))
    by_id = {g["id"]: g for g in found["groups"]}

    # The group in focus: its members side by side, the suggested keeper badged with why.
    first = by_id[_focused_id(page)]
    members = page.locator("#dup-members .dup-member")
    assert members.count() == len(first["members"])
    assert "suggested" in (members.first.get_attribute("class") or "")
    assert members.first.locator(".dup-suggested").inner_text() == "Suggested"
    assert members.first.locator(".dup-reason").inner_text() == f"Why: {first['reason']}."
    second = first["members"][1]
    card = members.nth(1)
    assert card.locator("a.dup-photo").get_attribute("href") == f"/photos/{second['image_id']}"
    assert f"{second['width']} × {second['height']}" in card.inner_text()
    assert card.locator("dd[title]").first.get_attribute("title") == second["path"]
    _thumbs_loaded(page)
    shot("open-group")

    # Keyboard: "2" keeps the second photo; the next open group comes into focus.
    page.keyboard.press("2")
    _text(page, "#count-kept", "1")
    _text(page, "#count-marked", str(len(first["members"]) - 1))
    wait_until(
        page,
        "(id) => document.querySelector('#dup-list [aria-current=true]').dataset.id != id",
        first["id"],
    )
    page.locator("#toasts").get_by_text(f"Group #{first['id']}: kept").wait_for()
    assert "kept" in page.locator("#dup-live").inner_text()
    assert (
        page.locator(f'#dup-list [data-id="{first["id"]}"] .dup-item-state').inner_text() == "kept"
    )

    # Mouse: "Not duplicates" on the group now in focus.
    not_dup = _focused_id(page)
    page.locator("#dup-focus").get_by_role("button", name="Not duplicates").click()
    _text(page, "#count-not", "1")
    wait_until(
        page,
        "(id) => document.querySelector('#dup-list [aria-current=true]').dataset.id != id",
        not_dup,
    )

    # "s" keeps the suggested photo; the toast's Undo reopens the group.
    undone = _focused_id(page)
    page.keyboard.press("s")
    _text(page, "#count-kept", "2")
    page.locator("#toasts").get_by_role("button", name="Undo").last.click()
    _text(page, "#count-kept", "1")
    _text(page, "#count-open", "2")
    assert _focused_id(page) == undone
    _text(page, "#dup-state", "Open")

    # Keys are text while typing in a field, and "?" hides and shows the key legend.
    page.locator("#dup-folder").press_sequentially("nu2")
    assert page.input_value("#dup-folder") == "nu2"
    assert page.locator("#count-not").inner_text() == "1"
    page.fill("#dup-folder", "")
    page.locator("#dup-title").focus()
    page.keyboard.press("?")
    assert page.locator("#dup-keys-list").is_hidden()
    page.keyboard.press("?")
    assert page.locator("#dup-keys-list").is_visible()

    # j / k move between groups.
    page.keyboard.press("k")
    wait_until(
        page,
        "(id) => document.querySelector('#dup-list [aria-current=true]').dataset.id != id",
        undone,
    )
    page.keyboard.press("j")
    wait_until(
        page,
        "(id) => document.querySelector('#dup-list [aria-current=true]').dataset.id == id",
        undone,
    )

    # The Kept tab: the decided group shows which photo was kept, and Undo.
    page.locator("#dup-status").get_by_role("button", name="Kept").click()
    wait_until(page, "location.search === '?status=kept'")
    wait_until(page, "document.querySelectorAll('#dup-list .dup-item').length === 1")
    kept_name = Path(second["path"]).name
    _text(page, "#dup-state", f"Kept {kept_name}")
    assert page.locator("#dup-focus").get_by_role("button", name="Undo decision").is_visible()
    assert page.locator("#dup-focus").get_by_role("button", name="Keep suggested").is_hidden()
    kept_card = page.locator("#dup-members .dup-member.kept")
    assert kept_card.count() == 1 and kept_name in (
        kept_card.locator("dd[title]").first.get_attribute("title") or ""
    )
    assert page.locator("#dup-members .dup-member.marked").count() == len(first["members"]) - 1
    _thumbs_loaded(page)
    shot("decided-group")
    page.emulate_media(color_scheme="dark")
    shot("decided-group-dark")
    page.emulate_media(color_scheme="light")

    # "u" undoes it there, and "2" decides it again.
    page.keyboard.press("u")
    _text(page, "#count-kept", "0")
    _text(page, "#dup-state", "Open")
    page.keyboard.press("2")
    _text(page, "#count-kept", "1")
    _text(page, "#dup-state", f"Kept {kept_name}")

    # The decisions persisted.
    kept = api.get("/duplicates", params={"status": "kept"}).json()
    assert [g["id"] for g in kept["groups"]] == [first["id"]]
    assert kept["groups"][0]["keeper_id"] == second["image_id"]
    assert kept["counts"] == {
        "open": 2,
        "kept": 1,
        "not_duplicates": 1,
        "marked_images": len(first["members"]) - 1,
    }
    rejected = api.get("/duplicates", params={"status": "not_duplicates"}).json()
    assert [g["id"] for g in rejected["groups"]] == [not_dup]
    still_open = api.get("/duplicates", params={"status": "open"}).json()
    assert undone in [g["id"] for g in still_open["groups"]]

    # The marked photos leave the library when duplicates are hidden; the kept one stays.
    everything = api.get("/images", params={"limit": 100}).json()
    shown = api.get("/images", params={"limit": 100, "hide_duplicates": "true"}).json()
    marked = {m["image_id"] for m in first["members"]} - {second["image_id"]}
    shown_ids = {i["id"] for i in shown["images"]}
    assert everything["total"] == 13
    assert shown["total"] == 13 - len(marked)
    assert not marked & shown_ids and second["image_id"] in shown_ids

    # One group per page: the pager, and j / ← across page boundaries.
    page.goto(f"{dup_site.url}/duplicates?status=all&limit=1")
    _text(page, "#dup-range", "Groups 1–1 of 4")
    assert page.locator("#dup-prev-page").is_disabled()
    page.get_by_role("button", name="Next page ›").click()
    _text(page, "#dup-range", "Groups 2–2 of 4")
    wait_until(page, "location.search === '?status=all&offset=1&limit=1'")
    page.keyboard.press("j")
    _text(page, "#dup-range", "Groups 3–3 of 4")
    _thumbs_loaded(page)
    shot("paged")
    page.keyboard.press("ArrowLeft")
    _text(page, "#dup-range", "Groups 2–2 of 4")

    # Deciding the open groups, page after page, ends at "All reviewed".
    page.goto(f"{dup_site.url}/duplicates?limit=1")
    _text(page, "#dup-range", "Groups 1–1 of 2")
    for left in ("1", "0"):
        page.keyboard.press("n")
        _text(page, "#count-open", left)
    page.get_by_text("All reviewed: no open groups left").wait_for()
    assert page.locator("#dup-review").is_hidden()
    shot("all-reviewed")
