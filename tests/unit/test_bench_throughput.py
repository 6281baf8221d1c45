"""bench.index_throughput's arithmetic: the shared-core bound, the verdicts per
runtime/precision, and which variants a machine runs."""

from __future__ import annotations

from typing import Any

import pytest

from bench._machine import CPU_FLAGS, cpu_flags, has_amx, has_hw_bf16
from bench._throughput_legs import Variant, steady
from bench.index_throughput import (
    TARGET_VS_BOUND,
    TARGET_VS_PIPELINE,
    TARGET_VS_PIPELINE_AMX,
    bound,
    plan_variants,
    summarise,
)
from vitdex import devices


def _run(steady_ips: float, wall: float = 10.0) -> dict[str, Any]:
    return {"wall_s": wall, "wall_images_per_s": 48 / wall, "steady_images_per_s": steady_ips}


def test_bound_is_both_stages_in_turn() -> None:
    # 20 img/s of decoding and 5 of model share the cores: 1 / (1/20 + 1/5) = 4.
    assert bound(20.0, 5.0) == pytest.approx(4.0)
    assert bound(None, 5.0) is None
    assert bound(20.0, 0.0) is None


def test_summary_gives_each_variant_its_bound_and_verdicts() -> None:
    runs = {
        "pipeline": [_run(1.0)],
        "decode": [_run(20.0), _run(30.0), _run(10.0)],  # median 20
        "model:torch-fp32": [_run(5.0)],
        "vitdex:torch-fp32": [_run(3.6)],
        "model:openvino-int8": [_run(20.0)],
        "vitdex:openvino-int8": [_run(8.0)],
    }
    summary = summarise(runs, amx=False)
    torch_row = summary["variants"]["torch-fp32"]
    assert torch_row["bound"] == pytest.approx(4.0)
    assert torch_row["vitdex_vs_bound"] == pytest.approx(0.9)
    assert torch_row["targets"]["vitdex_vs_bound"]["pass"] is True
    assert torch_row["vitdex_vs_pipeline"] == pytest.approx(3.6)
    assert torch_row["targets"]["vitdex_vs_pipeline"] == {
        "target": TARGET_VS_PIPELINE,
        "pass": False,
    }
    ov = summary["variants"]["openvino-int8"]
    assert ov["bound"] == pytest.approx(10.0)
    assert ov["targets"]["vitdex_vs_bound"]["pass"] is False  # 0.8 < 0.85
    assert ov["targets"]["vitdex_vs_pipeline"]["pass"] is True
    assert TARGET_VS_BOUND == 0.85


def test_amx_raises_the_pipeline_target_and_missing_legs_give_no_verdict() -> None:
    summary = summarise({"vitdex:torch-bf16": [_run(7.0)], "pipeline": [_run(1.0)]}, amx=True)
    row = summary["variants"]["torch-bf16"]
    assert summary["target_vs_pipeline"] == TARGET_VS_PIPELINE_AMX
    assert row["targets"]["vitdex_vs_pipeline"]["pass"] is False  # 7x < 8x
    assert row["bound"] is None
    assert row["targets"]["vitdex_vs_bound"]["pass"] is None


def test_variants_follow_the_cpu_and_the_selection() -> None:
    plain, skipped = plan_variants("torch", "auto", ["avx512f", "avx2"])
    assert plain == [Variant("torch", "fp32")]
    assert any("bf16" in reason for reason in skipped)
    with_bf16, _ = plan_variants("torch", "auto", ["avx512_bf16"])
    assert Variant("torch", "bf16") in with_bf16
    assert all(v.precision != "fp16" for v in with_bf16)
    chosen, skipped = plan_variants("torch", "fp32,int8", ["avx512_bf16"])
    assert chosen == [Variant("torch", "fp32")]
    assert "torch-int8: not supported" in skipped
    with pytest.raises(SystemExit, match="unknown runtimes"):
        plan_variants("tensorflow", "auto", [])


def test_flags_and_steady_rate() -> None:
    assert set(cpu_flags()) == set(CPU_FLAGS) & devices.cpu_flags()
    assert has_amx(["amx_bf16", "avx512_bf16"]) and not has_amx(["avx512_bf16"])
    assert has_hw_bf16(["avx512_bf16"]) and not has_hw_bf16(["avx2"])
    # Four images finished 1 s apart after the first: 3 images in 3 s.
    assert steady([10.0, 11.0, 12.0, 13.0]) == pytest.approx(1.0)
    assert steady([10.0]) is None
    assert Variant("openvino", "int8").label == "openvino-int8"
