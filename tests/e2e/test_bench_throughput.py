"""bench.index_throughput end to end in its smallest mode, on the tiny test ViT: every leg
kind runs as its own process and the results JSON holds the table's figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_smallest_run_measures_every_leg(tiny_vit: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITDEX_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [
            sys.executable,
            *("-m", "bench.index_throughput", "--images", "2", "--repeats", "1"),
            *("--size", "320x240", "--model", str(tiny_vit), "--cache", str(tmp_path / "c")),
            *("--runtimes", "torch", "--precisions", "fp32", "--out", str(out)),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CPU flags seen:" in proc.stdout
    assert "torch-fp32" in proc.stdout
    result = json.loads(out.read_text())
    assert set(result["legs"]) == {"pipeline", "decode", "model:torch-fp32", "vitdex:torch-fp32"}
    for leg in result["legs"].values():
        assert leg["runs"] == 1 and leg["wall_s"] > 0
    row = result["variants"]["torch-fp32"]
    assert row["bound"] > 0 and row["vitdex"] > 0
    assert row["vitdex_vs_bound"] == pytest.approx(row["vitdex"] / row["bound"])
    assert row["targets"]["vitdex_vs_bound"]["pass"] in (True, False)
    assert result["runs"]["vitdex:torch-fp32"][0]["embedded"] == 2
    assert result["runs"]["decode"][0]["images"] == 2
    assert result["machine"]["cpu_budget"] >= 1
    assert isinstance(result["machine"]["cpu_flags"], list)
