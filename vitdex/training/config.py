"""A DreamBooth run's settings, progress reports, result and stages, without torch.

:class:`TrainConfig` is what defines a run; it is saved inside every checkpoint and in
the catalog. This module imports neither torch nor diffusers, so the API can build and
check configs and list a run's checkpoints; :mod:`vitdex.training.dreambooth` trains.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitdex.errors import ConfigError

__all__ = [
    "LR_SCHEDULERS",
    "MIXED_PRECISIONS",
    "MODES",
    "OPTIMIZERS",
    "RESUMABLE_CHANGES",
    "Stage",
    "TrainConfig",
    "TrainProgress",
    "TrainResult",
    "config_differences",
    "latest_checkpoint",
    "list_checkpoints",
    "plan_stages",
    "scale_text_encoder_steps",
    "stage_at",
]

MODES = ("two-stage", "joint")
MIXED_PRECISIONS = ("auto", "no", "fp16", "bf16")
LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)
#: Config fields that may change between a run and its resumption (they do not alter the
#: weights); every other field must match the checkpoint's.
RESUMABLE_CHANGES = frozenset(
    {
        "save_every",
        "keep_checkpoints",
        "sample_every",
        "sample_prompts",
        "sample_seed",
        "sample_steps",
        "sample_resolution",
        "validation_every",
    }
)
#: Optimizers a run can use.
OPTIMIZERS = ("adamw", "adamw8bit", "adafactor")
_CHECKPOINT = re.compile(r"^step-(\d{8})$")
#: Default UNet and text encoder steps; their ratio scales the text encoder steps of a
#: run that sets only ``steps`` (see :func:`scale_text_encoder_steps`).
DEFAULT_STEPS = 800
DEFAULT_TEXT_ENCODER_STEPS = 350


# --------------------------------------------------------------------------- config


@dataclass
class TrainConfig:
    """Everything that defines a DreamBooth run; saved inside every checkpoint.

    Fields left as None (``version``, ``resolution``, ``lora_rank``) and ``"auto"``
    (``mixed_precision``, ``device``) are filled in when the run starts, from the base
    model and the machine; checkpoints hold the filled-in config.
    """

    #: Hub id, diffusers folder or single-file checkpoint.
    base_model: str
    #: Folder of instance images (``NNNN.png`` + optional ``NNNN.txt`` captions).
    instance_dir: str
    #: ``sd15``, ``sd21-base``, ``sd21`` or ``sdxl``; detected from the base when None.
    version: str | None = None
    #: A local diffusers folder with the configs for a single-file base (offline loading).
    base_config: str | None = None
    #: Hub revision (branch, tag or commit) of a hub base.
    revision: str | None = None
    #: Training resolution in pixels; the version's native resolution when None.
    resolution: int | None = None
    #: Folder of class images for prior preservation.
    class_dir: str | None = None
    #: Caption of instance images without a ``.txt`` sidecar.
    instance_prompt: str = "a photo of sks person"
    #: Caption of class images without a ``.txt`` sidecar (and prompt for generating them).
    class_prompt: str = "a photo of a person"
    #: UNet steps (optimizer steps; each sees batch_size x gradient_accumulation_steps).
    steps: int = DEFAULT_STEPS
    #: Text encoder steps: the first stage (two-stage) or the joint part (joint).
    text_encoder_steps: int = DEFAULT_TEXT_ENCODER_STEPS
    #: ``two-stage`` (text encoder, then UNet) or ``joint``.
    mode: str = "two-stage"
    #: Peak learning rate of the UNet.
    learning_rate: float = 2e-6
    #: Peak learning rate of the text encoder(s).
    text_encoder_learning_rate: float = 1e-6
    #: diffusers schedule name (see LR_SCHEDULERS).
    lr_scheduler: str = "constant"
    #: Warm-up steps of the schedule (per stage in two-stage mode).
    lr_warmup_steps: int = 0
    #: Instance images per micro-batch (as many class images are added with priors).
    batch_size: int = 1
    #: Micro-batches per optimizer step.
    gradient_accumulation_steps: int = 1
    #: Add the class images' loss so the model keeps what the class looks like.
    prior_preservation: bool = False
    #: Weight of the class images' loss.
    prior_loss_weight: float = 1.0
    #: Class images to have in ``class_dir``; missing ones are generated with the base
    #: model before training (0: use the folder as it is).
    num_class_images: int = 0
    #: Denoising steps per generated class image.
    class_generation_steps: int = 30
    #: ``auto`` (bf16 where the device runs it natively, else fp16 on GPUs, else no),
    #: ``no``, ``fp16`` or ``bf16``: autocast for the forward pass; trained weights stay fp32.
    mixed_precision: str = "auto"
    #: Recompute activations in the backward pass: less memory, ~30% more time.
    gradient_checkpointing: bool = False
    #: Encode the images with the VAE once, before training (the VAE is freed after).
    cache_latents: bool = True
    #: bitsandbytes' 8-bit AdamW; used only where bitsandbytes and CUDA exist.
    use_8bit_adam: bool = False
    #: PyTorch's scaled-dot-product attention (else the plain matmul implementation).
    sdpa: bool = True
    #: Seed of data order, augmentation, noise and initialisation.
    seed: int = 0
    #: Write a checkpoint every this many steps (0: only when stopped).
    save_every: int = 500
    #: Checkpoints kept; older ones are deleted.
    keep_checkpoints: int = 2
    #: LoRA rank; 0 trains all weights. None: 0 where the version allows a full
    #: fine-tune, else the version's default rank (SDXL).
    lora_rank: int | None = None
    #: LoRA alpha (scale alpha/rank); the rank when None.
    lora_alpha: int | None = None
    #: Centre crop (else a random crop per draw; fixed at encode time with cached latents).
    center_crop: bool = True
    #: Mirror half the draws horizontally.
    random_flip: bool = False
    #: Gradient norm clip.
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    #: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    device: str = "auto"
    #: Accept combinations the base registry refuses (resolution, version, full SDXL).
    force: bool = False

    # -- aspect-ratio buckets (vitdex.training.buckets)
    #: Train each image at its aspect-ratio bucket (area near resolution², sides multiples
    #: of 64, one bucket per batch) instead of a square crop.
    buckets: bool = False
    #: The most an image is scaled up to fill its bucket; a smaller image gets a smaller
    #: bucket of the same aspect instead.
    bucket_max_upscale: float = 2.0

    # -- captions (vitdex.training.captions)
    #: Share of draws trained with an empty caption (unconditional), 0..1.
    caption_dropout: float = 0.0
    #: Shuffle a caption's comma-separated tags per draw, keeping the first ``keep_tokens``.
    shuffle_tags: bool = False
    #: Leading comma-separated tags that stay in place when shuffling (the trigger word).
    keep_tokens: int = 1

    # -- during training (vitdex.training.dreambooth.sampling / validation / ema)
    #: Generate sample images every this many steps (0: never).
    sample_every: int = 0
    #: Prompts of the samples; the instance prompt when empty.
    sample_prompts: list[str] = field(default_factory=list)
    #: Seed of the first sample prompt; prompt i uses sample_seed + i.
    sample_seed: int = 1234
    #: Denoising steps per sample image.
    sample_steps: int = 20
    #: Sample side in pixels; the training resolution when None.
    sample_resolution: int | None = None
    #: Instance images held out of training to measure a validation loss (0: none).
    validation_images: int = 0
    #: Measure the validation loss every this many steps (0: only at the end).
    validation_every: int = 0
    #: Keep an exponential moving average of the trained weights; the output uses it.
    ema: bool = False
    #: Decay of the moving average per optimizer step.
    ema_decay: float = 0.999

    # -- optimizer and memory (vitdex.training.dreambooth.optim / vitdex.training.presets)
    #: ``adamw``, ``adamw8bit`` (bitsandbytes, CUDA) or ``adafactor``.
    optimizer: str = "adamw"
    #: Step each parameter as soon as its gradient is ready and free the gradient (less
    #: peak memory; no gradient accumulation, no gradient clipping across parameters).
    fused_backward: bool = False
    #: The memory preset the settings came from (``8gb``, ``12gb``, ``24gb``), if any.
    preset: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """A config from :meth:`to_dict` output; unknown keys are a ConfigError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown training settings: {', '.join(unknown)}")
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise ConfigError(f"invalid training config: {exc}") from exc

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run."""
        if self.mode == "two-stage":
            return self.text_encoder_steps + self.steps
        return self.steps

    def validate(self) -> None:
        """Raise ConfigError for values no run can use."""
        problems = []
        if self.mode not in MODES:
            problems.append(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            problems.append(f"mixed_precision must be one of {', '.join(MIXED_PRECISIONS)}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            problems.append(f"lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}")
        for name in ("steps", "text_encoder_steps", "lr_warmup_steps", "save_every", "seed"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        for name in ("batch_size", "gradient_accumulation_steps", "keep_checkpoints"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if self.mode in MODES and self.total_steps < 1:
            problems.append("nothing to train: steps (and text_encoder_steps) are 0")
        if self.learning_rate <= 0 or self.text_encoder_learning_rate <= 0:
            problems.append("learning rates must be > 0")
        if self.prior_loss_weight < 0:
            problems.append("prior_loss_weight must be >= 0")
        if self.prior_preservation and not self.class_dir:
            problems.append("prior_preservation needs class_dir")
        if self.num_class_images < 0 or self.class_generation_steps < 1:
            problems.append("num_class_images must be >= 0 and class_generation_steps >= 1")
        if self.lora_rank is not None and self.lora_rank < 0:
            problems.append("lora_rank must be >= 0")
        if self.resolution is not None and (self.resolution <= 0 or self.resolution % 8):
            problems.append("resolution must be a positive multiple of 8")
        if self.bucket_max_upscale < 1.0:
            problems.append("bucket_max_upscale must be >= 1")
        if not 0.0 <= self.caption_dropout <= 1.0:
            problems.append("caption_dropout must be between 0 and 1")
        for name in ("keep_tokens", "sample_every", "validation_images", "validation_every"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if self.sample_steps < 1:
            problems.append("sample_steps must be >= 1")
        if self.sample_resolution is not None and (
            self.sample_resolution <= 0 or self.sample_resolution % 8
        ):
            problems.append("sample_resolution must be a positive multiple of 8")
        if any(not isinstance(p, str) or not p.strip() for p in self.sample_prompts):
            problems.append("sample_prompts must be non-empty strings")
        if not 0.0 < self.ema_decay < 1.0:
            problems.append("ema_decay must be between 0 and 1 (exclusive)")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}")
        if self.fused_backward and self.gradient_accumulation_steps > 1:
            problems.append("fused_backward steps every gradient at once: no gradient accumulation")
        if problems:
            raise ConfigError("invalid training config: " + "; ".join(problems))


def scale_text_encoder_steps(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with ``text_encoder_steps`` scaled to ``steps`` when only ``steps`` is set.

    The text encoder default (350) belongs to the UNet default (800); kept fixed, it
    would make a 4-step trial run 354 steps. So a run that sets only ``steps`` gets the
    default ratio (350/800, rounded half up); explicit text encoder steps stay as given.
    """
    resolved = dict(options)
    steps = resolved.get("steps")
    if isinstance(steps, int) and resolved.get("text_encoder_steps") is None:
        resolved["text_encoder_steps"] = (
            steps * DEFAULT_TEXT_ENCODER_STEPS + DEFAULT_STEPS // 2
        ) // DEFAULT_STEPS
    return resolved


# --------------------------------------------------------------------------- results


@dataclass
class TrainProgress:
    """One progress report: after each optimizer step, and at each phase change."""

    #: ``loading``, ``generating``, ``caching``, ``training``, ``sampling``, ``validating``,
    #: ``checkpoint``, ``saving``, ``stopped`` or ``done``.
    phase: str
    step: int
    total_steps: int
    #: ``text_encoder``, ``joint`` or ``unet`` while training; None otherwise.
    stage: str | None = None
    loss: float | None = None
    #: Optimizer steps per second over the last few steps.
    it_per_s: float | None = None
    #: Learning rate of the first parameter group.
    lr: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None
    #: The checkpoint just written (phase ``checkpoint``/``stopped``).
    checkpoint: str | None = None
    #: The validation loss just measured (phase ``validating``).
    validation_loss: float | None = None
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """How a call to :func:`train` ended."""

    #: The trained pipeline (diffusers folder); None when the run was stopped early.
    final_dir: Path | None
    #: Optimizer steps done so far (the total when completed).
    steps: int
    #: Loss of the last step (None if no step ran in this call and none was recorded).
    final_loss: float | None
    #: The run's config with every automatic field filled in.
    config: TrainConfig
    completed: bool = True
    #: The newest checkpoint (the one a stopped run resumes from).
    checkpoint_dir: Path | None = None
    #: The LoRA weights file (LoRA runs).
    lora_file: Path | None = None
    #: The step this call resumed from (None: started fresh).
    resumed_from: int | None = None
    #: The optimizer actually used (``AdamW`` or ``AdamW8bit``).
    optimizer: str = "AdamW"
    #: Things the run decided on its own (e.g. 8-bit Adam unavailable).
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    #: Peak accelerator memory of this call in bytes (CUDA only; None on a CPU).
    peak_memory_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        return {
            "final_dir": str(self.final_dir) if self.final_dir else None,
            "steps": self.steps,
            "final_loss": self.final_loss,
            "config": self.config.to_dict(),
            "completed": self.completed,
            "checkpoint_dir": str(self.checkpoint_dir) if self.checkpoint_dir else None,
            "lora_file": str(self.lora_file) if self.lora_file else None,
            "resumed_from": self.resumed_from,
            "optimizer": self.optimizer,
            "notes": list(self.notes),
            "elapsed_s": self.elapsed_s,
            "peak_memory_bytes": self.peak_memory_bytes,
        }


# --------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class Stage:
    """A span of steps with one set of trained modules and one optimizer."""

    name: str
    start: int
    end: int
    train_unet: bool
    train_text: bool
    #: Stages sharing a key share the optimizer and LR schedule.
    optimizer: str


def plan_stages(config: TrainConfig) -> list[Stage]:
    """The stages of a run, in order (empty ones left out)."""
    te, unet = config.text_encoder_steps, config.steps
    if config.mode == "two-stage":
        stages = [
            Stage("text_encoder", 0, te, False, True, "text_encoder"),
            Stage("unet", te, te + unet, True, False, "unet"),
        ]
    else:
        joint = min(te, unet)
        key = "joint" if joint else "unet"
        stages = [
            Stage("joint", 0, joint, True, True, key),
            Stage("unet", joint, unet, True, False, key),
        ]
    return [s for s in stages if s.end > s.start]


def stage_at(stages: Sequence[Stage], step: int) -> Stage:
    """The stage that step ``step`` (0-based) belongs to."""
    for stage in stages:
        if stage.start <= step < stage.end:
            return stage
    return stages[-1]


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as (step, folder), oldest first."""
    root = Path(output_dir) / "checkpoints"
    found = []
    if root.is_dir():
        for path in root.iterdir():
            match = _CHECKPOINT.match(path.name)
            if match and (path / "state.pt").is_file() and (path / "config.json").is_file():
                found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def config_differences(a: TrainConfig, b: TrainConfig) -> list[str]:
    """Fields in which two configs differ, leaving out RESUMABLE_CHANGES."""
    da, db = a.to_dict(), b.to_dict()
    return sorted(k for k in da if k not in RESUMABLE_CHANGES and da[k] != db.get(k))
