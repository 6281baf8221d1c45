"""The training run page shows what a run measured while training: the validation loss as
a second line on the loss chart, and the sample images as a timeline (one row per prompt,
one column per step, newest right) that enlarges a sample on click."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import Site, wait_until
from tests.browser.test_training import local_base

pytestmark = pytest.mark.slow


def test_run_page_shows_validation_loss_and_samples(
    site: Site, page: Any, shot: Callable[[str], Path], tiny_sd: Path
) -> None:
    base = local_base(site, tiny_sd)
    made = httpx.post(
        f"{site.url}/api/v1/datasets",
        json={"name": "rex", "prompt": "a photo of sks dog", "seeds": [1], "k": 4},
    )
    assert made.status_code == 201, made.text
    started = httpx.post(
        f"{site.url}/api/v1/training-runs",
        json={
            "dataset": "rex",
            "base_model": str(base),
            "resolution": 64,
            "steps": 3,
            "text_encoder_steps": 0,
            "force": True,
            "options": {
                "mixed_precision": "no",
                "device": "cpu",
                "learning_rate": 1e-3,
                "sample_every": 1,
                "sample_steps": 2,
                "sample_prompts": ["a photo of sks dog", "sks dog wearing a red hat"],
                "validation_images": 1,
                "validation_every": 1,
                "ema": True,
                "ema_decay": 0.9,
            },
        },
        timeout=60,
    )
    assert started.status_code == 202, started.text
    run = started.json()

    page.goto(f"{site.url}/runs/{run['id']}")
    page.locator('#run-state[data-state="succeeded"]').wait_for(timeout=300_000)
    # Validation at steps 0..3: a second, dashed line with a dot per measurement, and a legend.
    chart = page.locator("#loss-chart svg.loss")
    wait_until(page, "document.querySelectorAll('#loss-chart svg.loss .val-dot').length === 4")
    assert chart.get_attribute("data-validation") == "4"
    assert chart.locator("polyline.line").count() == 1
    assert chart.locator("polyline.val-line").count() == 1
    legend = chart.locator(".legend").text_content() or ""
    assert "training loss" in legend and "validation loss" in legend

    # Samples: one row per prompt, one column per step, the newest right.
    grid = page.locator("#samples table.sample-grid")
    grid.wait_for()
    assert page.locator("#no-samples").is_hidden()
    headers = grid.locator("thead th").all_inner_texts()
    assert headers == ["prompt", "step 1", "step 2", "step 3"]
    rows = grid.locator("tbody tr")
    assert rows.count() == 2
    assert "sks dog wearing a red hat" in rows.nth(1).locator("th").inner_text()
    assert "seed 1235" in rows.nth(1).locator("th").inner_text()
    assert grid.locator("button.thumb img").count() == 6
    wait_until(
        page,
        "[...document.querySelectorAll('#samples img')]"
        ".every((i) => i.complete && i.naturalWidth > 0)",
    )
    assert grid.locator("img").first.evaluate("img => img.naturalWidth") == 64
    assert page.locator("#run-memory").is_hidden()  # trained on a CPU: no GPU peak to show
    shot("run-with-samples")

    # Click the newest sample of the second prompt: it opens large, with what it is.
    newest = rows.nth(1).locator("button.thumb").last
    assert newest.get_attribute("data-step") == "3"
    newest.click()
    dialog = page.locator("#sample-dialog")
    dialog.wait_for(state="visible")
    wait_until(page, "document.querySelector('#sample-large').naturalWidth > 0")
    caption = page.locator("#sample-caption").inner_text()
    assert caption == "step 3 · sks dog wearing a red hat · seed 1235"
    assert page.locator("#sample-large").evaluate("img => img.getBoundingClientRect().width") >= 256
    shot("sample-enlarged")
    page.locator("#sample-close").click()
    dialog.wait_for(state="hidden")

    # The images come from the run's samples folder only.
    shown = grid.locator("img").first.get_attribute("src") or ""
    assert shown.startswith(f"/api/v1/training-runs/{run['id']}/samples/step-00000001/")
    escape = httpx.get(f"{site.url}/api/v1/training-runs/{run['id']}/samples/%2e%2e/result.json")
    assert escape.status_code == 403
