"""The optimizer side of a DreamBooth run: AdamW (8-bit where it can), the learning-rate
schedule and, for fp16, the gradient scaler.

Each stage names its optimizer; stages that share one (``joint``) share its state and one
schedule spanning all their steps, while a new name starts a fresh optimizer and schedule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from vitdex.errors import ConfigError
from vitdex.training.config import Stage, TrainConfig
from vitdex.training.dreambooth.model import Model

__all__ = ["Optimization"]


class Optimization:
    """The current stage's optimizer, learning-rate schedule and grad scaler."""

    def __init__(
        self, config: TrainConfig, device: torch.device, stages: Sequence[Stage], notes: list[str]
    ) -> None:
        self.config = config
        self.device = device
        self.stages = stages
        #: Notes for the run's result (a fallback taken); shared with the run.
        self.notes = notes
        self.optimizer: Any = None
        #: The stage optimizer name the optimizer serves (``unet``, ``text_encoder``, ``joint``).
        self.key: str | None = None
        self.lr_scheduler: Any = None
        self.scaler: Any = None
        self.name = "AdamW"

    def start(self, stage: Stage, model: Model) -> None:
        """A fresh optimizer and schedule over the parameters ``stage`` trains."""
        # Drop the old optimizer's state before the new one allocates its own.
        self.optimizer = None
        cfg = self.config
        groups = []
        if stage.optimizer in ("unet", "joint"):
            groups.append({"params": model.parameters(["unet"]), "lr": cfg.learning_rate})
        if stage.optimizer in ("text_encoder", "joint"):
            groups.append(
                {
                    "params": model.parameters(model.version.text_encoders),
                    "lr": cfg.text_encoder_learning_rate,
                }
            )
        kwargs: dict[str, Any] = {
            "betas": (cfg.adam_beta1, cfg.adam_beta2),
            "weight_decay": cfg.adam_weight_decay,
            "eps": cfg.adam_epsilon,
        }
        optimizer: Any = None
        if cfg.use_8bit_adam:
            try:
                import bitsandbytes as bnb  # type: ignore[import-not-found, unused-ignore]
            except ImportError:
                bnb = None
            if bnb is not None and self.device.type == "cuda":
                optimizer = bnb.optim.AdamW8bit(groups, **kwargs)
                self.name = "AdamW8bit"
            else:
                note = "8-bit Adam needs bitsandbytes and CUDA; used torch AdamW"
                if note not in self.notes:
                    self.notes.append(note)
        if optimizer is None:
            # fused AdamW is several times faster on GPUs; the CPU path keeps the default.
            fused = self.device.type == "cuda"
            optimizer = torch.optim.AdamW(groups, fused=fused or None, **kwargs)
        from diffusers.optimization import get_scheduler

        span = sum(s.end - s.start for s in self.stages if s.optimizer == stage.optimizer)
        self.lr_scheduler = get_scheduler(
            cfg.lr_scheduler,
            optimizer,
            num_warmup_steps=cfg.lr_warmup_steps,
            num_training_steps=span,
        )
        self.optimizer = optimizer
        self.key = stage.optimizer
        fp16 = cfg.mixed_precision == "fp16"
        self.scaler = torch.amp.GradScaler(self.device.type) if fp16 else None

    def state(self) -> dict[str, Any]:
        """What a checkpoint stores to carry on exactly: optimizer, schedule, scaler."""
        return {
            "optimizer_key": self.key,
            "optimizer_name": self.name,
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler else None,
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def resume(self, state: Mapping[str, Any]) -> None:
        """Take :meth:`state` of a checkpoint back when it is of this stage's optimizer."""
        if state.get("optimizer_key") != self.key:
            return
        if state.get("optimizer_name", "AdamW") != self.name:
            raise ConfigError(
                f"the checkpoint used {state['optimizer_name']} but this "
                f"machine runs {self.name}; resume where it was trained"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate ``loss``'s gradients (scaled for fp16)."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def step(self) -> None:
        """Apply the accumulated gradients (clipped) and advance the schedule."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.config.max_grad_norm > 0:
            # Frozen parameters have no gradient; clipping skips them.
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def lr(self) -> float:
        """The learning rate of the first parameter group now."""
        return float(self.lr_scheduler.get_last_lr()[0])
