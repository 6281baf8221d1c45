"""The optimizer side of a DreamBooth run: AdamW, 8-bit AdamW or Adafactor, an optional
fused backward pass, the learning-rate schedule and, for fp16, the gradient scaler.

Each stage names its optimizer; stages that share one (``joint``) share its state and one
schedule spanning all their steps, while a new name starts a fresh optimizer and schedule.

With ``fused_backward`` each parameter is stepped inside the backward pass, as soon as
its gradient is accumulated (``register_post_accumulate_grad_hook``), and its gradient is
freed at once: the gradients of the whole UNet never exist together (OneTrainer's "fused
back pass"), which saves 4 bytes per trained parameter (10 GB for SDXL's UNet). The
stepping is done by a small optimizer per parameter of the same class that shares the
stage optimizer's ``state`` dict, so checkpoints hold the ordinary ``state_dict`` of one
optimizer and resume exactly. Clipping then bounds each parameter's gradient norm by
``max_grad_norm`` on its own (no global norm exists before the first step is taken).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from vitdex.errors import ConfigError
from vitdex.training.config import Stage, TrainConfig
from vitdex.training.dreambooth.model import Model

__all__ = ["OPTIMIZER_NAMES", "Optimization", "optimizer_choice"]

#: The optimizer class each ``TrainConfig.optimizer`` value names (as results report it).
OPTIMIZER_NAMES = {"adamw": "AdamW", "adamw8bit": "AdamW8bit", "adafactor": "Adafactor"}

_Factory = Callable[[list[dict[str, Any]]], Any]


def optimizer_choice(config: TrainConfig) -> str:
    """The optimizer a config asks for; the older ``use_8bit_adam`` means ``adamw8bit``."""
    if config.use_8bit_adam and config.optimizer == "adamw":
        return "adamw8bit"
    return config.optimizer


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
        self.name = OPTIMIZER_NAMES["adamw"]
        #: Fused backward: per-parameter optimizers sharing ``optimizer.state``.
        self._per_param: dict[torch.nn.Parameter, tuple[Any, int]] = {}
        self._hooks: list[Any] = []

    def _note(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)

    def _factory(self) -> tuple[_Factory, str]:
        """A function building the configured optimizer over parameter groups, and its name."""
        cfg = self.config
        choice = optimizer_choice(cfg)
        adam: dict[str, Any] = {
            "betas": (cfg.adam_beta1, cfg.adam_beta2),
            "weight_decay": cfg.adam_weight_decay,
            "eps": cfg.adam_epsilon,
        }
        if choice == "adafactor":
            from transformers.optimization import Adafactor

            # A fixed learning rate from the run's schedule: no relative steps, no scaling
            # by parameter size, no warm-up of its own.
            def adafactor(groups: list[dict[str, Any]]) -> Any:
                return Adafactor(
                    groups,
                    lr=cfg.learning_rate,
                    relative_step=False,
                    scale_parameter=False,
                    warmup_init=False,
                    weight_decay=cfg.adam_weight_decay,
                )

            return adafactor, OPTIMIZER_NAMES["adafactor"]
        if choice == "adamw8bit":
            try:
                import bitsandbytes as bnb  # type: ignore[import-not-found, unused-ignore]
            except ImportError:
                bnb = None
            if bnb is not None and self.device.type == "cuda":
                return (lambda groups: bnb.optim.AdamW8bit(groups, **adam)), "AdamW8bit"
            self._note("8-bit Adam needs bitsandbytes and CUDA; used torch AdamW")
        # fused AdamW is several times faster on GPUs; the CPU path keeps the default.
        fused = self.device.type == "cuda" or None
        return (lambda groups: torch.optim.AdamW(groups, fused=fused, **adam)), "AdamW"

    def start(self, stage: Stage, model: Model) -> None:
        """A fresh optimizer and schedule over the parameters ``stage`` trains."""
        # Drop the old optimizer's state (and hooks) before the new one allocates its own.
        self._unhook()
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
        factory, self.name = self._factory()
        optimizer = factory(groups)
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
        if cfg.fused_backward:
            if self.scaler is not None:
                raise ConfigError("fused_backward cannot use fp16; use bf16 or no")
            self._hook(factory)

    # -- fused backward

    def _hook(self, factory: _Factory) -> None:
        """Step each parameter as its gradient is complete, then free the gradient."""
        for index, group in enumerate(self.optimizer.param_groups):
            for param in group["params"]:
                single = factory([{"params": [param], "lr": group["lr"]}])
                single.state = self.optimizer.state
                self._per_param[param] = (single, index)
                self._hooks.append(param.register_post_accumulate_grad_hook(self._step_param))

    def _step_param(self, param: torch.Tensor) -> None:
        single, index = self._per_param[param]  # type: ignore[index]
        # The schedule changes the stage optimizer's learning rate only.
        single.param_groups[0]["lr"] = self.optimizer.param_groups[index]["lr"]
        clip = self.config.max_grad_norm
        if clip > 0:
            torch.nn.utils.clip_grad_norm_([param], clip)
        single.step()
        param.grad = None

    def _unhook(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        self._per_param = {}

    def _share_state(self) -> None:
        # load_state_dict replaces the stage optimizer's state dict with a new one.
        for single, _ in self._per_param.values():
            single.state = self.optimizer.state

    # -- checkpoints

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
        self._share_state()
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])

    # -- steps

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate ``loss``'s gradients (scaled for fp16); with fused backward this
        also applies them, parameter by parameter."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def step(self) -> None:
        """Apply the accumulated gradients (clipped) and advance the schedule."""
        if self._hooks:
            # The parameters stepped during backward; only the schedule is left. The
            # scheduler checks that its optimizer stepped first: the per-parameter ones did.
            self.optimizer._opt_called = True
            self.lr_scheduler.step()
            return
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
