"""bench.train_step end to end in its smallest mode: the baseline and the feature legs
(buckets, EMA, samples) each train the tiny pipeline in their own process, and the JSON
holds what the table prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench._train_options import sample_costs

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_feature_legs_run_beside_the_baseline(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITDEX_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [
            sys.executable,
            *("-m", "bench.train_step", "--legs", "baseline,buckets,ema,samples"),
            *("--warmup", "1", "--steps", "4", "--repeats", "1", "--threads", "1"),
            *("--sample-every", "2", "--sample-steps", "1", "--out", str(out)),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    legs = result["legs"]
    assert list(legs) == ["baseline", "buckets", "ema", "samples"]
    assert legs["buckets"]["settings"]["buckets"] is True
    assert legs["ema"]["settings"]["ema"] is True
    assert legs["samples"]["settings"]["sample_every"] == 2
    for row in legs.values():
        assert row["s_per_step"] > 0 and row["peak_mb"] > 0
        assert row["speedup_vs_baseline"] is not None
    # Steps 2 and 4 of the timed 2..5 each rendered one image (the samples.jsonl count).
    assert legs["samples"]["sample_images"] == 2
    assert legs["samples"]["s_per_sample_image"] is not None
    assert "s per image" in proc.stdout and "buckets" in proc.stdout


def test_sample_cost_is_the_time_beyond_baseline_steps() -> None:
    runs = [
        {"s_timed": 5.0, "s_per_step": 0.5, "steps_timed": 4, "sample_images": 2},
        {"s_timed": 7.0, "s_per_step": 0.5, "steps_timed": 4, "sample_images": 2},
    ]
    # 4 baseline steps take 4 x 0.25 s; the rest is 2 images' cost: (5 - 1) / 2, (7 - 1) / 2.
    assert sample_costs(runs, 0.25) == {"sample_images": 2, "s_per_sample_image": 2.5}
    # Without a baseline the leg's own median step stands in: (5 - 2) / 2, (7 - 2) / 2.
    assert sample_costs(runs, None)["s_per_sample_image"] == 2.0
    none = sample_costs([{**runs[0], "sample_images": 0}], 0.25)
    assert none["s_per_sample_image"] is None
