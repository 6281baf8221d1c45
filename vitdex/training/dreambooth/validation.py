"""A validation loss on instance images held out of training.

The training loss of one step is noisy (one image, one random timestep), so it says
little about progress or over-fitting. This loss is the mean denoising error over fixed
held-out images x fixed timesteps with fixed noise: every measurement, and every run on
the same images, measures exactly the same thing. Nothing in it depends on the run's
seed — not which images are held out (evenly spaced over the sorted file names), not the
noise (a constant seed) — so runs with other seeds or settings compare directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vitdex.errors import ConfigError
from vitdex.training.config import TrainConfig
from vitdex.training.data import Augmentation, Example, load_pixels
from vitdex.training.dreambooth.model import Model
from vitdex.training.dreambooth.sampling import eval_mode

__all__ = ["TIMESTEPS", "Validator", "hold_out"]

#: Timesteps per held-out image, evenly spread over the scheduler's range.
TIMESTEPS = 8
#: The seed of the validation noise: a constant, not the run's seed.
_NOISE_SEED = 20_240_601
#: Timesteps per UNet forward pass (bounds the memory of a measurement).
_CHUNK = 4


def hold_out(examples: Sequence[Example], count: int) -> tuple[list[Example], list[Example]]:
    """Split ``examples`` (sorted by file name) into (training, held out) images.

    The ``count`` held-out ones are evenly spaced over the list (the middle one of each of
    ``count`` equal parts), so the choice depends only on the file names.
    """
    total = len(examples)
    if count <= 0:
        return list(examples), []
    if count >= total:
        raise ConfigError(
            f"validation_images={count} would leave no training image: the instance "
            f"folder holds {total}; hold out fewer"
        )
    chosen = {(2 * i + 1) * total // (2 * count) for i in range(count)}
    kept = [e for i, e in enumerate(examples) if i not in chosen]
    held = [e for i, e in enumerate(examples) if i in chosen]
    return kept, held


class Validator:
    """Measures the validation loss of the model's current weights."""

    def __init__(self, config: TrainConfig, model: Model, held_out: Sequence[Example]) -> None:
        self.config = config
        self.model = model
        self.held_out = list(held_out)
        horizon = int(model.noise_scheduler.config.num_train_timesteps)
        # The middle of each of TIMESTEPS equal parts of [0, horizon).
        self.timesteps = ((torch.arange(TIMESTEPS) * 2 + 1) * horizon // (2 * TIMESTEPS)).long()
        self._latents: torch.Tensor | None = None
        self._noise: torch.Tensor | None = None

    def _prepare(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out images' latents (the VAE's mean) and the fixed noise, made once."""
        if self._latents is None or self._noise is None:
            res = int(self.config.resolution or 0)
            pixels = torch.stack(
                [load_pixels(e.image, res, Augmentation(False, 0.5, 0.5)) for e in self.held_out]
            )
            with eval_mode(self.model, vae=True):
                mean, _ = self.model.encode_pixels(pixels)
            self._latents = (mean * self.model.scaling_factor).cpu()
            generator = torch.Generator("cpu").manual_seed(_NOISE_SEED)
            shape = (len(self.held_out), TIMESTEPS, *self._latents.shape[1:])
            self._noise = torch.randn(shape, generator=generator)
        return self._latents, self._noise

    @torch.no_grad()
    def measure(self) -> float:
        """The mean squared denoising error over held-out images x fixed timesteps.

        The caller puts the weights to measure (the EMA's, say) in place first.
        """
        from torch.nn.functional import mse_loss

        latents, noise = self._prepare()
        model = self.model
        scheduler = model.noise_scheduler
        device = model.device
        total, count = 0.0, 0
        with eval_mode(model):
            for i, example in enumerate(self.held_out):
                with model.autocast():
                    hidden, pooled = model.encode_text([example.caption])
                for start in range(0, TIMESTEPS, _CHUNK):
                    t = self.timesteps[start : start + _CHUNK].to(device)
                    n = t.shape[0]
                    x0 = latents[i : i + 1].to(device).repeat(n, 1, 1, 1)
                    eps = noise[i, start : start + n].to(device)
                    noisy = scheduler.add_noise(x0, eps, t)
                    if model.prediction_type == "v_prediction":
                        target = scheduler.get_velocity(x0, eps, t)
                    else:
                        target = eps
                    kwargs: dict[str, Any] = {}
                    if model.sdxl:
                        res = float(self.config.resolution or 0)
                        # As in training: original size, crop top-left, target size.
                        time_ids = torch.tensor([[res, res, 0.0, 0.0, res, res]], device=device)
                        kwargs["added_cond_kwargs"] = {
                            "text_embeds": pooled.repeat(n, 1) if pooled is not None else None,
                            "time_ids": time_ids.repeat(n, 1),
                        }
                    with model.autocast():
                        pred = model.unet(noisy, t, hidden.repeat(n, 1, 1), **kwargs).sample
                    total += float(mse_loss(pred.float(), target.float(), reduction="sum"))
                    count += target.numel()
        return total / count
