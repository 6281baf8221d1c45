"""DreamBooth fine-tuning of Stable Diffusion with diffusers.

``train(config, output_dir)`` trains the UNet and the text encoder(s) of a base model on
an instance folder (optionally with prior preservation on a class folder) and writes the
result as a diffusers pipeline to ``output_dir/final``. Two schedules:

- ``two-stage`` (as fast-stable-diffusion does it): the text encoder alone for
  ``text_encoder_steps`` steps, then the UNet alone for ``steps`` steps, each stage with
  its own optimizer and learning-rate schedule; total ``text_encoder_steps + steps``.
- ``joint``: UNet and text encoder together for the first ``text_encoder_steps`` steps,
  then the UNet alone, one optimizer throughout; total ``steps``.

Every ``save_every`` steps (and when asked to stop) a checkpoint is written atomically to
``output_dir/checkpoints/step-NNNNNNNN``: the trained weights, optimizer, LR schedule,
grad scaler, RNG states, the step and the run's config. ``train`` resumes from the newest
one on its own, so a process killed at any moment continues from its last save and ends
with the same weights as a run that never stopped. Data order, augmentation and noise are
pure functions of (seed, position), so the step is all the resumed loop needs to carry on.

While it trains, a run can render sample images every ``sample_every`` steps
(``output_dir/samples/``, listed in ``samples.jsonl``), measure a validation loss on
``validation_images`` held-out instance images (``validation.jsonl``, from step 0) and keep
an EMA of the weights (``ema``), which samples, validation and the output then use. Both
are as reproducible as training: a resumed run renders the same pixels and measures the
same losses at the same steps.

The parts: :mod:`.model` (the base's modules, LoRA, text encoding, the loss),
:mod:`.batches` (draws, latent and caption caches, class images), :mod:`.optim`,
:mod:`.checkpoints`, :mod:`.output` (``final/``, ``lora/``, ``result.json``),
:mod:`.sampling`, :mod:`.validation`, :mod:`.ema` and :mod:`.loop` (the loop and
:func:`train`). The run's settings (:class:`TrainConfig`),
reports and stages live in the torch-free :mod:`vitdex.training.config`. Run as
``python -m vitdex.training.dreambooth CONFIG.json OUTPUT_DIR``; it prints one JSON
progress line per step.
"""

from __future__ import annotations

from vitdex.training.config import (
    LR_SCHEDULERS,
    MIXED_PRECISIONS,
    MODES,
    TrainConfig,
    TrainProgress,
    TrainResult,
    latest_checkpoint,
    list_checkpoints,
    plan_stages,
)
from vitdex.training.dreambooth.loop import main, train
from vitdex.training.dreambooth.model import LORA_TARGETS, fuse_lora

__all__ = [
    "LORA_TARGETS",
    "LR_SCHEDULERS",
    "MIXED_PRECISIONS",
    "MODES",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "fuse_lora",
    "latest_checkpoint",
    "list_checkpoints",
    "main",
    "plan_stages",
    "train",
]
