"""The training config: round trip, validation, stage plans; importable without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from vitdex.errors import ConfigError
from vitdex.training.config import (
    TrainConfig,
    config_differences,
    plan_stages,
    scale_text_encoder_steps,
    stage_at,
)


def test_config_module_does_not_import_torch() -> None:
    code = (
        "import sys, vitdex.training.config; "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_config_round_trip_and_validation() -> None:
    config = TrainConfig(base_model="x/y", instance_dir="/data", steps=10, mode="joint")
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ConfigError, match="unknown training settings: colour"):
        TrainConfig.from_dict({**config.to_dict(), "colour": "red"})
    bad: list[tuple[dict[str, Any], str]] = [
        ({"mode": "both"}, "mode must be one of"),
        ({"prior_preservation": True}, "prior_preservation needs class_dir"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"steps": 0, "text_encoder_steps": 0}, "nothing to train"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"lr_scheduler": "step"}, "lr_scheduler"),
    ]
    for change, message in bad:
        with pytest.raises(ConfigError, match=message):
            TrainConfig(**{**config.to_dict(), **change}).validate()


def test_stage_plans() -> None:
    two = TrainConfig(base_model="a/b", instance_dir="/d", steps=5, text_encoder_steps=3)
    assert [(s.name, s.start, s.end, s.optimizer) for s in plan_stages(two)] == [
        ("text_encoder", 0, 3, "text_encoder"),
        ("unet", 3, 8, "unet"),
    ]
    assert two.total_steps == 8
    joint = TrainConfig(
        base_model="a/b", instance_dir="/d", steps=5, text_encoder_steps=3, mode="joint"
    )
    assert [(s.name, s.start, s.end, s.optimizer) for s in plan_stages(joint)] == [
        ("joint", 0, 3, "joint"),
        ("unet", 3, 5, "joint"),
    ]
    assert joint.total_steps == 5
    unet_only = TrainConfig(base_model="a/b", instance_dir="/d", steps=4, text_encoder_steps=0)
    assert [s.name for s in plan_stages(unet_only)] == ["unet"]


def test_stage_at_and_differences() -> None:
    config = TrainConfig(base_model="a/b", instance_dir="/d", steps=5, text_encoder_steps=3)
    stages = plan_stages(config)
    assert [stage_at(stages, s).name for s in range(8)] == ["text_encoder"] * 3 + ["unet"] * 5
    other = TrainConfig(**{**config.to_dict(), "save_every": 7, "seed": 1})
    assert config_differences(config, other) == ["seed"]  # save_every may change on resume


def test_steps_alone_scales_the_text_encoder_steps() -> None:
    """--steps 4 alone must not keep the 350 default text encoder steps (354 in all)."""
    assert scale_text_encoder_steps({"steps": 4})["text_encoder_steps"] == 2
    assert scale_text_encoder_steps({"steps": 800})["text_encoder_steps"] == 350
    assert scale_text_encoder_steps({"steps": 0})["text_encoder_steps"] == 0
    explicit = {"steps": 4, "text_encoder_steps": 0}
    assert scale_text_encoder_steps(explicit) == explicit
    assert scale_text_encoder_steps({"seed": 1}) == {"seed": 1}
    assert TrainConfig(base_model="x", instance_dir="d").text_encoder_steps == 350


def test_new_settings_are_validated() -> None:
    config = TrainConfig(base_model="x/y", instance_dir="/data")
    bad: list[tuple[dict[str, Any], str]] = [
        ({"optimizer": "sgd"}, "optimizer must be one of adamw, adamw8bit, adafactor"),
        ({"fused_backward": True, "gradient_accumulation_steps": 2}, "no gradient accumulation"),
        ({"caption_dropout": 1.5}, "caption_dropout"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"sample_prompts": [" "]}, "sample_prompts"),
    ]
    for change, message in bad:
        with pytest.raises(ConfigError, match=message):
            TrainConfig(**{**config.to_dict(), **change}).validate()
    TrainConfig(**{**config.to_dict(), "optimizer": "adafactor", "fused_backward": True}).validate()


def test_8bit_adam_flag_means_the_adamw8bit_optimizer() -> None:
    from vitdex.training.dreambooth.optim import optimizer_choice

    base = TrainConfig(base_model="x/y", instance_dir="/data")
    assert optimizer_choice(base) == "adamw"
    assert optimizer_choice(TrainConfig(**{**base.to_dict(), "use_8bit_adam": True})) == "adamw8bit"
    chosen = TrainConfig(**{**base.to_dict(), "use_8bit_adam": True, "optimizer": "adafactor"})
    assert optimizer_choice(chosen) == "adafactor"  # the explicit optimizer wins


@pytest.mark.parametrize(
    ("device", "memory_gib", "found"),
    [
        ("cpu", None, "a CPU device with no GPU memory"),
        ("mps", None, "an Apple MPS device"),
        ("cuda", 15.9, "a CUDA GPU with 15.9 GiB"),
        ("cuda", 22.4, "a CUDA GPU with 22.4 GiB"),
    ],
)
def test_full_sdxl_needs_a_big_enough_gpu(
    device: str, memory_gib: float | None, found: str
) -> None:
    from vitdex.training.bases import check_full_finetune

    memory = None if memory_gib is None else int(memory_gib * 2**30)
    with pytest.raises(ConfigError) as refused:
        check_full_finetune("sdxl", device, memory)
    message = refused.value.message
    assert found in message and "at least 22.5 GiB" in message
    assert "LoRA only" in message and "force" in message and "lora_rank" in message
    check_full_finetune("sdxl", device, memory, force=True)  # force overrides


def test_full_fine_tunes_that_fit() -> None:
    from vitdex.training.bases import check_full_finetune, get_version

    check_full_finetune("sdxl", "cuda", int(22.5 * 2**30))
    check_full_finetune("sdxl", "cuda", 80 * 2**30)
    for version in ("sd15", "sd21-base", "sd21"):
        check_full_finetune(version, "cpu", None)  # their full fine-tune is the default
    assert get_version("sdxl").to_dict()["full_finetune_min_gib"] == 22.5
