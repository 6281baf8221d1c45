"""The output of a finished DreamBooth run: ``final/`` (a diffusers pipeline with the
trained weights, LoRA updates fused in), ``lora/`` for LoRA runs, and ``result.json``,
which makes calling :func:`~vitdex.training.dreambooth.train` again return at once."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from vitdex.errors import ConfigError
from vitdex.training.bases import load_base
from vitdex.training.config import TrainConfig, TrainResult, config_differences, latest_checkpoint
from vitdex.training.dreambooth.atomic import publish, write_json_atomic
from vitdex.training.dreambooth.model import Model, fuse_lora, text_checkpointing

__all__ = ["finished_result", "write_final", "write_result"]


def write_final(model: Model, config: TrainConfig, output_dir: Path) -> tuple[Path, Path | None]:
    """Write the trained pipeline to ``output_dir/final`` (and, for LoRA runs, the LoRA
    weights to ``output_dir/lora``); returns both paths (the LoRA file or ``None``)."""
    for module in [model.unet, *model.text_encoders]:
        module.to("cpu")
    lora_file = None
    components: dict[str, Any] = {}
    if model.lora:
        lora_file = _write_lora(model, output_dir)
    else:
        if "unet" in model.trainable:
            model.unet.disable_gradient_checkpointing()
            components["unet"] = model.unet
        for name, te in zip(model.version.text_encoders, model.text_encoders, strict=True):
            if name in model.trainable:
                text_checkpointing(te, enable=False)
                components[name] = te
    # A fresh load gives the frozen parts back in full precision (they ran in the
    # compute dtype here); trained parts are passed in, LoRA updates merged into fp32.
    fresh = load_base(
        config.base_model,
        version=config.version,
        config=config.base_config,
        revision=config.revision,
        force=True,
        components=components,
    ).pipeline
    if model.lora:
        scale = model.lora_alpha / int(config.lora_rank or 1)
        for name in model.trainable:
            fuse_lora(getattr(fresh, name), model.trained_state(name), scale)
    final = output_dir / "final"
    tmp = output_dir / f".tmp-final-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(str(tmp), safe_serialization=True)
    publish(tmp, final)
    return final, lora_file


def _write_lora(model: Model, output_dir: Path) -> Path:
    """Save the LoRA weights in diffusers' format (``output_dir/lora``)."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_diffusers

    arguments = {
        "unet": "unet_lora_layers",
        "text_encoder": "text_encoder_lora_layers",
        "text_encoder_2": "text_encoder_2_lora_layers",
    }
    layers: dict[str, Any] = {}
    for name in model.trainable:
        # peft's format names tensors without the adapter name.
        peft_state = {
            key.replace(".default.", "."): value for key, value in model.trained_state(name).items()
        }
        layers[arguments[name]] = convert_state_dict_to_diffusers(peft_state)
        # Rank and alpha travel in the file's metadata; without them loaders assume
        # alpha = rank and scale the update wrongly.
        metadata = arguments[name].replace("_layers", "_adapter_metadata")
        layers[metadata] = model.lora_configs[name].to_dict()
    cls = model.pipeline_class
    target = output_dir / "lora"
    tmp = output_dir / f".tmp-lora-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    cls.save_lora_weights(str(tmp), safe_serialization=True, **layers)
    publish(tmp, target)
    return target / "pytorch_lora_weights.safetensors"


def write_result(output_dir: Path, result: TrainResult, user_config: TrainConfig) -> None:
    """Record a completed run in ``output_dir/result.json``, with the settings as given."""
    write_json_atomic(
        output_dir / "result.json",
        {**result.to_dict(), "user_config": user_config.to_dict()},
    )


def finished_result(output_dir: Path, config: TrainConfig) -> TrainResult | None:
    """The recorded result when this exact run already completed in ``output_dir``."""
    path = output_dir / "result.json"
    final = output_dir / "final"
    if not path.is_file() or not (final / "model_index.json").is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        recorded = TrainConfig.from_dict(data["user_config"])
    except (OSError, ValueError, KeyError, ConfigError):
        return None
    changed = config_differences(recorded, config)
    if changed:
        raise ConfigError(
            f"{output_dir} holds a finished run with other settings "
            f"({', '.join(changed)}); use a new output folder"
        )
    lora = data.get("lora_file")
    return TrainResult(
        final_dir=final,
        steps=int(data["steps"]),
        final_loss=data.get("final_loss"),
        config=TrainConfig.from_dict(data["config"]),
        completed=True,
        checkpoint_dir=latest_checkpoint(output_dir),
        lora_file=Path(lora) if lora else None,
        resumed_from=data.get("resumed_from"),
        optimizer=data.get("optimizer", "AdamW"),
        notes=list(data.get("notes", [])),
        elapsed_s=0.0,
        peak_memory_bytes=data.get("peak_memory_bytes"),
    )
