"""Datasets, dataset, jobs and training-run pages, driven by clicks: curate a dataset from
the selection, exclude a photo, caption one, export it, train a tiny Stable Diffusion base
for two steps and watch the run to its checkpoint; cancel a long run on the jobs page."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import Site, wait_until

pytestmark = pytest.mark.slow


def local_base(site: Site, tiny_sd: Path) -> Path:
    """The tiny base copied inside VITDEX_HOME, where a run may read a local base from."""
    target = Path(site.env["VITDEX_HOME"]) / "bases" / "tiny-sd15"
    if not target.exists():
        shutil.copytree(tiny_sd, target)
    return target


def test_dataset_by_clicking_then_export_and_train(
    site: Site, page: Any, shot: Callable[[str], Path], tiny_sd: Path
) -> None:
    base = local_base(site, tiny_sd)
    page.goto(f"{site.url}/datasets")
    page.get_by_text("No datasets yet").wait_for()
    assert page.locator("#create-dataset").is_disabled()
    page.evaluate("window.vitdex.selection.set([1, 2])")
    assert page.locator("#seeds .tile").count() == 2
    page.fill("#ds-name", "rex")
    page.fill("#ds-prompt", "a photo of sks dog")
    page.fill("#ds-class-prompt", "a photo of a dog")
    page.locator("details.options summary").click()
    page.fill("#ds-k", "6")
    page.fill("#ds-class-count", "2")
    shot("new-dataset")
    page.get_by_role("button", name="Create dataset").click()
    page.wait_for_url(re.compile(r"/datasets/\d+$"))
    page.locator("#instance-items .item").first.wait_for()
    assert page.locator("#dataset-title").inner_text() == "rex"
    assert page.locator('#class-items .pill[data-state="included"]').count() == 2
    items = page.locator("#instance-items .item")
    assert items.count() >= 3
    assert "seed" in items.first.locator(".reason").inner_text()
    shot("dataset")

    # Exclude a neighbour by clicking it: it is marked out, the count follows.
    target = page.locator('#instance-items .item:has(.pill[data-state="included"])').nth(2)
    image_id = target.get_attribute("data-image-id")
    photo = page.locator(f'#instance-items .item-photo[data-image-id="{image_id}"]')
    photo.click()
    wait_until(
        page,
        f"""document.querySelector('#instance-items .item-photo[data-image-id="{image_id}"]')
            ?.getAttribute('aria-pressed') === 'false'""",
    )
    item = page.locator(f'#instance-items .item[data-image-id="{image_id}"]')
    assert "excluded by hand" in item.locator(".reason").inner_text()
    assert item.locator('.pill[data-state="excluded"]').count() == 1

    # A photo not among the candidates joins from its own page ("add to dataset").
    dataset_url = page.url
    shown = {
        int(i)
        for i in page.locator("#instance-items .item, #class-items .item").evaluate_all(
            "items => items.map((i) => i.dataset.imageId)"
        )
    }
    outsider = next(i for i in range(1, 19) if i not in shown)
    page.goto(f"{site.url}/photos/{outsider}")
    page.get_by_role("button", name="Add to dataset").click()
    page.locator(".toast").filter(has_text=f"photo {outsider} added to rex").wait_for()
    page.goto(dataset_url)
    joined = page.locator(f'#instance-items .item[data-image-id="{outsider}"]')
    joined.wait_for()
    assert "included by hand" in joined.locator(".reason").inner_text()

    # Caption the first photo; it is stored (a reload shows it).
    first = page.locator("#instance-items .item").first
    first_id = first.get_attribute("data-image-id")
    first.locator("input.caption").fill("a photo of sks dog on a sofa")
    first.locator("input.caption").press("Enter")
    page.locator("#instance-items input.caption.saved").wait_for()
    page.reload()
    caption = page.locator(f'#instance-items .item[data-image-id="{first_id}"] input.caption')
    caption.wait_for()
    assert caption.input_value() == "a photo of sks dog on a sofa"

    # Export: a job whose bar reaches the end; then each photo shows its crop.
    page.fill("#ex-resolution", "64")
    page.get_by_role("button", name="Export").click()
    page.locator("#export-status .ok").wait_for(timeout=60_000)
    assert page.locator("#export-status .progress").get_attribute("aria-valuenow") == "100"
    assert "exported" in page.locator("#export-status").inner_text()
    page.locator("#instance-items .crop-box").first.wait_for()
    crops = page.locator("#instance-items .crop-box").count()
    included = page.locator('#instance-items .pill[data-state="included"]').count()
    assert crops == included
    shot("exported")

    # Train two steps on the tiny base; the run page follows it to its checkpoint.
    page.fill("#tr-base", str(base))
    page.fill("#tr-steps", "2")
    page.fill("#tr-te-steps", "0")
    page.fill("#tr-resolution", "64")
    page.locator("#train-form details.options summary").click()
    page.fill("#tr-device", "cpu")
    page.select_option("#tr-precision", "no")
    page.check("#tr-force")
    # The run's side settings from the form: EMA weights and a sample per prompt at the end.
    page.check("#tr-ema")
    page.fill("#tr-sample-every", "2")
    page.fill("#tr-sample-prompts", "a photo of sks dog\nsks dog on a beach")
    assert "needs network" in page.locator("#train-form").inner_text()
    shot("train-form")
    page.get_by_role("button", name="Start training").click()
    page.wait_for_url(re.compile(r"/runs/\d+$"))
    page.locator('#run-state[data-state="succeeded"]').wait_for(timeout=300_000)
    page.locator("#checkpoints .checkpoint").wait_for()
    assert page.locator("#run-step").inner_text().startswith("step 2/2")
    assert page.locator("#run-bar .progress").get_attribute("aria-valuenow") == "100"
    assert page.locator("#loss-chart svg polyline").count() == 1
    sha = page.locator("#checkpoints .sha").inner_text()
    assert re.fullmatch(r"[0-9a-f]{64}", sha)
    download = page.locator("#checkpoints a.download").get_attribute("href")
    got = httpx.get(f"{site.url}{download}", timeout=60)
    assert got.status_code == 200 and len(got.content) > 1000
    # The sample grid, when the checkpoint has one, is a loaded image.
    samples = page.locator("#checkpoints img.sample")
    if samples.count():
        wait_until(page, "document.querySelector('#checkpoints img.sample').complete")
        assert samples.first.evaluate("img => img.naturalWidth") > 0
    config = page.locator("#run-config").inner_text()
    assert "instance_prompt" in config and "a photo of sks dog" in config
    assert "sks dog on a beach" in config
    assert page.locator("#cancel-run").is_hidden()
    grid = page.locator("#samples table.sample-grid")
    grid.wait_for()
    assert grid.locator("tbody tr").count() == 2
    assert grid.locator("thead th").all_inner_texts() == ["prompt", "step 2"]
    shot("run")


def test_dataset_with_a_sampler_and_tags(
    site: Site, page: Any, shot: Callable[[str], Path]
) -> None:
    page.goto(f"{site.url}/datasets")
    page.evaluate("window.vitdex.selection.set([1])")
    page.fill("#ds-name", "spread")
    page.fill("#ds-prompt", "a photo of sks dog")
    page.locator("details.options summary").click()
    page.select_option("#ds-sampler", "representative")
    page.fill("#ds-k", "10")
    page.fill("#ds-min-distance", "0.001")
    # Without a cap the sampler has nothing to spread: refused, with the reason shown.
    page.watch.allow(r"/api/v1/datasets$", 400)
    page.get_by_role("button", name="Create dataset").click()
    page.locator(".toast.bad").filter(has_text="give max").wait_for()
    page.fill("#ds-tags", "nobody has this")
    page.fill("#ds-max", "4")
    page.get_by_role("button", name="Create dataset").click()
    page.locator(".toast.bad").filter(has_text="no photo has tag").wait_for()
    page.fill("#ds-tags", "")
    page.check("#ds-hide-duplicates")
    shot("sampler-form")
    page.get_by_role("button", name="Create dataset").click()
    page.wait_for_url(re.compile(r"/datasets/\d+$"))
    page.locator("#instance-items .item").first.wait_for()
    reasons = page.locator("#instance-items .reason").all_inner_texts()
    assert reasons[0] == "seed"
    assert sum(r.startswith("representative of cluster") for r in reasons) == 3
    assert any(r.startswith("not sampled (cluster") for r in reasons)
    meta = page.locator("#dataset-meta").inner_text()
    assert "sampler representative" in meta and "min distance 0.001" in meta
    assert "duplicates hidden" in meta
    shot("sampler-dataset")


def test_cancel_a_running_job_on_the_jobs_page(
    site: Site, page: Any, shot: Callable[[str], Path], tiny_sd: Path
) -> None:
    base = local_base(site, tiny_sd)
    made = httpx.post(
        f"{site.url}/api/v1/datasets",
        json={"name": "long", "prompt": "a photo of sks dog", "seeds": [1], "k": 3},
    )
    assert made.status_code == 201, made.text
    started = httpx.post(
        f"{site.url}/api/v1/training-runs",
        json={
            "dataset": "long",
            "base_model": str(base),
            "resolution": 64,
            "steps": 20000,
            "text_encoder_steps": 0,
            "force": True,
            "options": {"mixed_precision": "no", "device": "cpu"},
        },
    )
    assert started.status_code == 202, started.text
    job_id = started.json()["job_id"]

    page.goto(f"{site.url}/jobs")
    row = page.locator(f'#jobs tr[data-id="{job_id}"]')
    row.locator('.pill[data-state="running"]').wait_for(timeout=120_000)
    assert "train (run" in row.inner_text()
    # Cancel once training steps run (not while the dataset is still being exported).
    wait_until(
        page,
        f"""document.querySelector('#jobs tr[data-id="{job_id}"]')
            ?.innerText.includes('phase training')""",
        timeout=120_000,
    )
    shot("running")
    row.get_by_role("button", name=f"Cancel job {job_id}").click()
    row.locator('.pill[data-state="cancelled"]').wait_for(timeout=120_000)
    shot("cancelled")

    # A finished job offers no cancel (the API would answer 409 naming its state).
    assert row.get_by_role("button", name=f"Cancel job {job_id}").count() == 0
    other = page.locator('#jobs tr:has(.pill[data-state="succeeded"])').first
    assert other.get_by_role("button").count() == 0
    # The run page reads the same: cancelled, resumable.
    page.goto(f"{site.url}/runs/{started.json()['id']}")
    page.locator('#run-state[data-state="cancelled"]').wait_for()
    page.locator("#resume-run").wait_for()  # visible
    step = int(page.locator("#run-step").inner_text().split()[1].split("/")[0])
    assert 0 < step < 20000
    # The steps it ran are on the curve (one dot per reported step).
    page.locator("#loss-chart svg.loss circle").first.wait_for()
    shot("run-cancelled")


def test_dataset_words_captions_and_buckets(
    site: Site, page: Any, shot: Callable[[str], Path]
) -> None:
    from tests.photos import make_photo

    # Two photos of other shapes, so the histogram has more than one bucket.
    make_photo(site.photos / "tall.jpg", size=(90, 180), seed=40)
    make_photo(site.photos / "wide.jpg", size=(240, 100), seed=41)
    site.cli("index", str(site.photos))
    made = site.cli(
        "dataset", "create", "rex", "--seed", "1", "--k", "19", "--no-dedup",
        "--trigger-word", "sks", "--class-word", "dog", "--class-count", "0", "--json",
    )  # fmt: skip
    assert '"trigger_word": "sks"' in made.stdout
    page.goto(f"{site.url}/datasets/1")
    first = page.locator("#instance-items .item").first
    first.wait_for()
    assert page.locator("#set-trigger").input_value() == "sks"
    assert page.locator("#set-prompt").input_value() == "a photo of sks dog"
    caption = first.locator("input.caption")
    assert caption.input_value() == "a photo of sks dog"
    assert first.locator(".pill.source").inner_text() == "default"

    # Inline caption: Esc undoes, Enter saves (marked "own"), × goes back to the default.
    caption.fill("sks dog asleep")
    caption.press("Escape")
    assert caption.input_value() == "a photo of sks dog"
    caption.fill("sks dog asleep")
    caption.press("Enter")
    first = page.locator("#instance-items .item").first
    first.locator("input.caption.saved").wait_for()
    assert first.locator(".pill.source").inner_text() == "own"
    shot("caption-own")
    first.get_by_role("button", name=re.compile("Clear the caption")).click()
    wait_until(
        page,
        "document.querySelector('#instance-items .item .pill.source').textContent === 'default'",
    )
    assert page.locator("#instance-items .item input.caption").first.input_value() == (
        "a photo of sks dog"
    )

    # A new trigger word renames the subject in every default caption.
    page.fill("#set-trigger", "ohwx")
    page.select_option("#set-crop-mode", "buckets")
    page.get_by_role("button", name="Save").click()
    wait_until(
        page,
        "document.querySelector('#instance-items input.caption').value === 'a photo of ohwx dog'",
    )
    assert page.locator("#set-prompt").input_value() == "a photo of ohwx dog"
    assert page.locator("#buckets-mode").inner_text() == "in use"

    # Find/replace: a dry run says how many would change; Apply changes them.
    n_items = page.locator("#instance-items .item").count()
    page.fill("#rp-find", "dog")
    page.fill("#rp-replace", "corgi")
    assert page.locator("#rp-apply").is_disabled()
    page.get_by_role("button", name="Preview").click()
    page.locator("#rp-count").filter(has_text="would change").wait_for()
    assert (
        page.locator("#rp-count")
        .inner_text()
        .startswith(f"would change {n_items} of {n_items} captions")
    )
    assert page.locator("#rp-result li").count() == min(n_items, 20)
    assert page.locator("#instance-items input.caption").first.input_value() == (
        "a photo of ohwx dog"
    )
    shot("replace-preview")
    page.get_by_role("button", name="Apply").click()
    page.locator("#rp-count").filter(has_text=f"changed {n_items} of").wait_for()
    wait_until(
        page,
        "document.querySelector('#instance-items input.caption').value === 'a photo of ohwx corgi'",
    )
    assert page.locator("#instance-items .pill.source").first.inner_text() == "own"
    # A bad regex is refused with its reason, as a toast.
    page.watch.allow(r"/captions/replace$", 400)
    page.fill("#rp-find", "(")
    page.check("#rp-regex")
    page.get_by_role("button", name="Preview").click()
    page.locator(".toast.bad").filter(has_text="invalid regular expression").wait_for()

    # The histogram: one bar per bucket, counts adding up to the included instance images.
    included = page.locator('#instance-items .pill[data-state="included"]').count()
    bins = page.locator("#buckets-chart [role=listitem]")
    assert bins.count() >= 2
    counts = bins.evaluate_all("rows => rows.map((r) => Number(r.dataset.count))")
    assert sum(counts) == included
    labels = page.locator("#buckets-chart .size").all_inner_texts()
    assert all(re.fullmatch(r"\d+×\d+", label) for label in labels)
    shot("buckets-512")
    # Another base resolution: the page asks again, the bins change, the total stays.
    page.select_option("#bk-resolution", "256")
    wait_until(
        page,
        """(before) => JSON.stringify([...document.querySelectorAll('#buckets-chart .size')]
            .map((s) => s.textContent)) !== JSON.stringify(before)""",
        labels,
    )
    assert sum(bins.evaluate_all("rows => rows.map((r) => Number(r.dataset.count))")) == included
    shot("buckets-256")
