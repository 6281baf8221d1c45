"""An exponential moving average (EMA) of a DreamBooth run's trained weights.

The shadow is a float32 copy of every trainable tensor (the LoRA tensors in LoRA runs),
moved towards the weights after each optimizer step. Averaging smooths the last steps'
noise out of the result; samples, the validation loss and the final output use it when
the run asks for it. The shadow is saved in every checkpoint, so a resumed run averages
exactly as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch

from vitdex.errors import VitdexError
from vitdex.training.dreambooth.model import Model

__all__ = ["EMA", "ema_decay"]


def ema_decay(decay: float, updates: int) -> float:
    """The decay of the ``updates``-th update (1-based), warmed up as diffusers' EMAModel.

    The first update copies the weights; later ones use ``min(decay, (1 + k) / (10 + k))``
    with ``k = updates - 1``, so a short run does not stay stuck near the base weights.
    """
    k = updates - 1
    if k <= 0:
        return 0.0
    return min(decay, (1 + k) / (10 + k))


class EMA:
    """The shadow weights of a run's trainable modules and how to use them."""

    def __init__(self, model: Model, decay: float) -> None:
        self.model = model
        self.decay = decay
        # Trainable parameters do not change identity during a run: a fixed list suffices.
        self.shadow: dict[str, dict[str, torch.Tensor]] = {
            module: {n: p.detach().float().clone() for n, p in params}
            for module, params in model.trainable.items()
        }

    @torch.no_grad()
    def update(self, updates: int) -> None:
        """Move the shadow towards the weights after optimizer step number ``updates``."""
        weight = 1.0 - ema_decay(self.decay, updates)
        for module, params in self.model.trainable.items():
            shadow = self.shadow[module]
            for n, p in params:
                # lerp: shadow + weight * (p - shadow); exact for weights a stage leaves alone.
                shadow[n].lerp_(p.detach().float(), weight)

    def state(self, module: str) -> dict[str, torch.Tensor]:
        """One module's shadow on the CPU (for a checkpoint)."""
        shadow = self.shadow[module]
        return {n: t.detach().to("cpu", copy=True).contiguous() for n, t in shadow.items()}

    def load_state(self, module: str, tensors: Mapping[str, torch.Tensor]) -> None:
        """Put a checkpoint's shadow of ``module`` back (exactly; names must match)."""
        shadow = self.shadow.get(module)
        if shadow is None or set(shadow) != set(tensors):
            raise VitdexError(f"checkpoint EMA weights of {module} do not match the model")
        with torch.no_grad():
            for n, t in shadow.items():
                t.copy_(tensors[n])

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Make the shadow the model's weights (for the final output)."""
        for module, params in self.model.trainable.items():
            for n, p in params:
                p.copy_(self.shadow[module][n])

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The shadow in the model for the duration (samples, validation), then the weights back."""
        backup: dict[str, dict[str, torch.Tensor]] = {}
        with torch.no_grad():
            for module, params in self.model.trainable.items():
                backup[module] = {n: p.detach().clone() for n, p in params}
        self.copy_to_model()
        try:
            yield
        finally:
            with torch.no_grad():
                for module, params in self.model.trainable.items():
                    for n, p in params:
                        p.copy_(backup[module][n])
