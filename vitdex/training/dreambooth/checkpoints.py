"""Resumable checkpoints of a DreamBooth run: ``output_dir/checkpoints/step-NNNNNNNN``.

Each holds the trained weights (safetensors, only of modules some stage has trained so
far), the EMA shadow of every trained module when the run keeps one, optimizer, LR
schedule, grad scaler, RNG states, the step and the run's config; it
appears atomically (:func:`~vitdex.training.dreambooth.atomic.publish`). The data position
is not stored: draws are a function of the config and the step.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitdex.errors import ConfigError
from vitdex.training.config import Stage, TrainConfig, config_differences, list_checkpoints
from vitdex.training.dreambooth.atomic import publish
from vitdex.training.dreambooth.ema import EMA
from vitdex.training.dreambooth.model import Model
from vitdex.training.dreambooth.optim import Optimization

__all__ = [
    "clear_partial",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

_STATE_FORMAT = 1


def rng_state() -> dict[str, Any]:
    """The global Python, NumPy, torch (and CUDA) generator states."""
    np_state: Any = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # Lists, not arrays, so that torch.load(weights_only=True) reads them back.
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (CUDA's only where there is CUDA)."""
    random.setstate(_as_tuple(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    # The checkpoint stores Python's state with lists where random.setstate wants tuples.
    if isinstance(value, list | tuple):
        return tuple(_as_tuple(v) for v in value)
    return value


def save_checkpoint(
    output_dir: Path,
    step: int,
    *,
    config: TrainConfig,
    stages: Sequence[Stage],
    model: Model,
    optim: Optimization,
    loss: float | None,
    ema: EMA | None = None,
) -> Path:
    """Write a resumable checkpoint for ``step`` atomically; prune old ones."""
    from safetensors.torch import save_file

    root = output_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = []
    for module in model.trainable:
        # Modules no stage has touched yet equal the base; they are not stored.
        touched = any(
            s.start < step and (s.train_unet if module == "unet" else s.train_text) for s in stages
        )
        if touched:
            save_file(model.trained_state(module), str(tmp / f"{module}.safetensors"))
            weights.append(module)
    averaged = []
    if ema is not None:
        for module in ema.shadow:
            save_file(ema.state(module), str(tmp / f"ema-{module}.safetensors"))
            averaged.append(module)
    state = {
        "format": _STATE_FORMAT,
        "step": step,
        "weights": weights,
        "ema": averaged,
        **optim.state(),
        "rng": rng_state(),
        "loss": loss,
        "config": config.to_dict(),
    }
    torch.save(state, tmp / "state.pt")
    (tmp / "config.json").write_text(
        json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8"
    )
    target = root / name
    publish(tmp, target)
    for _, old in list_checkpoints(output_dir)[: -config.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(
    checkpoint: Path, config: TrainConfig, model: Model, ema: EMA | None = None
) -> tuple[int, dict[str, Any]]:
    """Put a checkpoint's weights into ``model`` (and its shadow into ``ema``); returns its
    step and its whole state (optimizer, RNG and loss are taken back later, as the loop
    reaches them)."""
    from safetensors.torch import load_file

    state: dict[str, Any] = torch.load(
        checkpoint / "state.pt", map_location="cpu", weights_only=True
    )
    if state.get("format") != _STATE_FORMAT:
        raise ConfigError(f"{checkpoint} was written by an incompatible version")
    saved = TrainConfig.from_dict(state["config"])
    changed = config_differences(saved, config)
    if changed:
        raise ConfigError(
            f"{checkpoint.parent.parent} holds a run with other settings "
            f"({', '.join(changed)}); use a new output folder or the same settings"
        )
    for module in state["weights"]:
        tensors = load_file(str(checkpoint / f"{module}.safetensors"))
        model.load_trained_state(module, tensors)
    if ema is not None:
        averaged = state.get("ema") or []
        if set(averaged) != set(ema.shadow):
            names = ", ".join(sorted(ema.shadow))
            raise ConfigError(f"{checkpoint} holds no EMA weights of {names}")
        for module in averaged:
            ema.load_state(module, load_file(str(checkpoint / f"ema-{module}.safetensors")))
    return int(state["step"]), state


def clear_partial(output_dir: Path) -> None:
    """Remove the leftovers of a save that was killed halfway."""
    root = output_dir / "checkpoints"
    if root.is_dir():
        for tmp in root.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
