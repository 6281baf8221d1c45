"""Memory presets: what each fills in per base, that explicit options win, and the
expected-memory estimate they are chosen by."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vitdex.errors import ConfigError
from vitdex.training.config import TrainConfig
from vitdex.training.presets import (
    ACTIVATION_GIB,
    PARAMS,
    PRESETS,
    apply_preset,
    describe_presets,
    estimate_memory_gb,
    full_run_defaults,
    preset_settings,
    preset_summary,
)

VERSIONS = ("sd15", "sd21-base", "sd21", "sdxl")


def test_presets_module_does_not_import_torch() -> None:
    """runs.create_run applies presets in the API process, which never imports torch."""
    code = "import sys, vitdex.training.presets; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_a_preset_options_come_back_unchanged() -> None:
    options = {"steps": 10, "preset": None}
    assert apply_preset(options, "sd15") == options
    assert apply_preset({}, "sdxl") == {}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_fills_only_unset_keys(preset: str, version: str) -> None:
    chosen = preset_settings(preset, version)
    explicit = {"preset": preset, "batch_size": 3, "optimizer": "adamw", "steps": 5}
    out = apply_preset(explicit, version)
    assert out["batch_size"] == 3 and out["optimizer"] == "adamw" and out["steps"] == 5
    assert out["preset"] == preset
    for key, value in chosen.items():
        if key not in explicit:
            assert out[key] == value, key
    # The result is a valid run config; the resolution stays the version's native one.
    assert "resolution" not in out
    TrainConfig.from_dict({"base_model": "b", "instance_dir": "i", **out}).validate()


def test_none_counts_as_unset_and_8bit_adam_as_an_optimizer_choice() -> None:
    out = apply_preset({"preset": "8gb", "lora_rank": None, "use_8bit_adam": True}, "sd15")
    assert out["lora_rank"] == 0  # filled: None is what the CLI passes for "not given"
    assert "optimizer" not in out and out["use_8bit_adam"] is True


def test_per_base_values() -> None:
    full_sdxl = preset_settings("24gb", "sdxl")
    assert full_sdxl["lora_rank"] == 0 and full_sdxl["optimizer"] == "adafactor"
    assert full_sdxl["fused_backward"] and full_sdxl["gradient_checkpointing"]
    # SDXL fully fine-tunes only at 24gb; the smaller presets train LoRA.
    assert preset_settings("12gb", "sdxl")["lora_rank"] > 0
    assert preset_settings("8gb", "sdxl")["lora_rank"] > 0
    # SD 1.5 fully fine-tunes everywhere; at 24gb with plain AdamW, no checkpointing.
    assert all(preset_settings(p, "sd15")["lora_rank"] == 0 for p in PRESETS)
    roomy = preset_settings("24gb", "sd15")
    assert roomy["optimizer"] == "adamw" and not roomy["gradient_checkpointing"]
    assert preset_settings("8gb", "sd21")["lora_rank"] > 0
    for preset in PRESETS:
        for version in VERSIONS:
            settings = preset_settings(preset, version)
            assert settings["mixed_precision"] == "bf16" and settings["cache_latents"]


def test_unknown_version_means_sd15_and_unknown_preset_is_refused() -> None:
    assert apply_preset({"preset": "12gb"}, None) == apply_preset({"preset": "12gb"}, "sd15")
    with pytest.raises(ConfigError, match=r"8gb, 12gb, 24gb"):
        apply_preset({"preset": "6gb"}, "sd15")
    with pytest.raises(ConfigError, match="sd15"):
        apply_preset({"preset": "8gb"}, "sd3")


@pytest.mark.parametrize("version", VERSIONS)
def test_expected_memory_grows_with_the_preset(version: str) -> None:
    rows = describe_presets(version)
    assert [r["preset"] for r in rows] == list(PRESETS)
    expected = [r["expected_memory_gb"] for r in rows]
    assert expected == sorted(expected) and len(set(expected)) == 3
    for row in rows:
        assert row["fits"] == (row["expected_memory_gb"] <= row["budget_gb"])
        assert row["settings"] == preset_settings(row["preset"], version)
    assert rows[1]["fits"] and rows[2]["fits"]


def test_full_sdxl_needs_what_only_the_24gb_settings_save() -> None:
    lean = preset_settings("24gb", "sdxl")
    assert estimate_memory_gb("sdxl", lean) <= 22.5  # the least memory a full run accepts
    # Keeping every gradient (no fused backward) pushes it past 24; 8-bit Adam's states
    # (2 B/param against Adafactor's ~1) leave a 24 GB card almost nothing.
    assert estimate_memory_gb("sdxl", {**lean, "fused_backward": False}) > 24
    adam8 = estimate_memory_gb("sdxl", {**lean, "optimizer": "adamw8bit"})
    assert 22.5 < adam8 > estimate_memory_gb("sdxl", lean)


def test_estimate_follows_the_written_formula() -> None:
    """SD 1.5, full AdamW in fp32, UNet only: 16 B per UNet parameter, the frozen text
    encoder at 4 B, activations without checkpointing, overhead."""
    settings = {"lora_rank": 0, "mixed_precision": "no", "text_encoder_steps": 0}
    p = PARAMS["sd15"]
    by_hand = (p["unet"] * 16 + p["text"][0] * 4) / 2**30 + ACTIVATION_GIB["sd15"][0] + 0.75
    assert estimate_memory_gb("sd15", settings) == round(by_hand, 1)
    # Mixed precision adds the half-precision copy and halves the frozen encoder.
    mixed = estimate_memory_gb("sd15", {**settings, "mixed_precision": "bf16"})
    delta = (p["unet"] * 2 - p["text"][0] * 2) / 2**30
    assert mixed == pytest.approx(round(by_hand + delta, 1), abs=0.11)
    # Prior preservation doubles the images per micro-batch, and so the activations.
    prior = estimate_memory_gb("sd15", {**settings, "prior_preservation": True})
    assert prior == pytest.approx(round(by_hand + ACTIVATION_GIB["sd15"][0], 1), abs=0.11)
    # A LoRA run holds the base frozen and trains far fewer parameters.
    assert estimate_memory_gb("sd15", {**settings, "lora_rank": 16}) < by_hand / 2


def test_summary_says_what_was_filled_and_kept() -> None:
    chosen = {"preset": "24gb", "batch_size": 2}
    saved = apply_preset(chosen, "sdxl")
    lines = preset_summary("24gb", "sdxl", chosen, saved)
    assert lines[0].startswith("preset 24gb for sdxl: ") and "optimizer=adafactor" in lines[0]
    assert lines[1] == "kept as given: batch_size=2"
    assert "expected peak memory ~" in lines[2] and "GiB" in lines[2]
    unknown = preset_summary("8gb", None, {"preset": "8gb"}, apply_preset({"preset": "8gb"}, None))
    assert "give --version" in unknown[0]
    tight = preset_summary(
        "8gb", "sdxl", {"preset": "8gb"}, apply_preset({"preset": "8gb"}, "sdxl")
    )
    assert "out-of-memory" in tight[-1]


def test_full_sdxl_runs_default_to_frozen_text_encoders() -> None:
    assert full_run_defaults({"lora_rank": 0}, "sdxl") == {"lora_rank": 0, "text_encoder_steps": 0}
    kept = {"lora_rank": 0, "text_encoder_steps": 5}
    assert full_run_defaults(kept, "sdxl") == kept  # set by the caller: left alone
    for options, version in (
        ({"lora_rank": 0}, "sd15"),  # trains its text encoder as usual
        ({"lora_rank": 0}, None),  # not known before loading: the run resolves it
        ({"lora_rank": 16}, "sdxl"),
        ({}, "sdxl"),
    ):
        assert full_run_defaults(options, version) == options
