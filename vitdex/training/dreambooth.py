"""DreamBooth fine-tuning of Stable Diffusion with diffusers: the loop and its checkpoints.

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

The run's settings (:class:`TrainConfig`), reports and stages live in the torch-free
:mod:`vitdex.training.config`. Run as ``python -m vitdex.training.dreambooth CONFIG.json
OUTPUT_DIR``; it prints one JSON progress line per step.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import re
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitdex.errors import ConfigError, VitdexError
from vitdex.training.bases import BaseVersion, LoadedBase, check_resolution, load_base
from vitdex.training.config import (
    LR_SCHEDULERS,
    MIXED_PRECISIONS,
    MODES,
    Stage,
    TrainConfig,
    TrainProgress,
    TrainResult,
    config_differences,
    latest_checkpoint,
    list_checkpoints,
    plan_stages,
    stage_at,
)
from vitdex.training.data import (
    IMAGE_SUFFIXES,
    Example,
    augmentation,
    captions_of,
    example_index,
    load_examples,
    load_pixels,
)

__all__ = [
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

_STATE_FORMAT = 1

# --------------------------------------------------------------------------- helpers


def _resolve_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    from vitdex.indexer.embedder import default_precision

    precision = default_precision(device)
    return "no" if precision == "fp32" else precision


def _weight_dtype(precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)


def _resolve_config(config: TrainConfig, base: LoadedBase, device: torch.device) -> TrainConfig:
    """``config`` with version, resolution, precision, LoRA rank and device filled in."""
    version = base.version
    resolution = config.resolution or version.resolution
    check_resolution(version, resolution, force=config.force)
    lora_rank = config.lora_rank
    if lora_rank is None:
        lora_rank = 0 if version.full_finetune else version.default_lora_rank
    if lora_rank == 0 and not version.full_finetune and not config.force:
        raise ConfigError(
            f"{version.title} trains as LoRA only (a full fine-tune needs ~40 GB); "
            "set lora_rank, or force it"
        )
    return dataclasses.replace(
        config,
        version=version.name,
        resolution=resolution,
        lora_rank=lora_rank,
        mixed_precision=_resolve_precision(config.mixed_precision, device),
        device=str(device),
    )


def _check_model_resolution(pipe: Any, resolution: int) -> None:
    vae_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    unet_factor = 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    multiple = vae_factor * unet_factor
    if resolution % multiple:
        raise ConfigError(
            f"resolution {resolution} is not a multiple of {multiple}, which this model's "
            "VAE and UNet downsampling need"
        )


def _noise_seed(seed: int, micro_batch: int) -> int:
    # A distinct, reproducible generator per micro-batch: resuming needs no generator state.
    return int(np.random.SeedSequence([seed, micro_batch, 7]).generate_state(1, np.uint64)[0] >> 1)


def _rng_state() -> dict[str, Any]:
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


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_as_tuple(v) for v in value)
    return value


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
        elif path.is_dir():
            _fsync_dir(path)
    _fsync_dir(root)


def _publish(tmp: Path, target: Path) -> None:
    """Make the fully written folder ``tmp`` appear as ``target`` in one rename."""
    _fsync_tree(tmp)
    if target.exists():
        # Replacing is not atomic for folders: move the old one aside first.
        old = target.with_name(f".old-{target.name}-{os.getpid()}")
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(target)
    _fsync_dir(target.parent)


def _write_json_atomic(path: Path, data: Any) -> None:
    from vitdex.training.convert import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    _fsync_dir(path.parent)


# --------------------------------------------------------------------------- model side

#: Linear layers that get LoRA adapters: the attention projections.
LORA_TARGETS = {
    "unet": ("to_k", "to_q", "to_v", "to_out.0"),
    "text_encoder": ("q_proj", "k_proj", "v_proj", "out_proj"),
}


def fuse_lora(module: Any, lora: Mapping[str, torch.Tensor], scale: float) -> None:
    """Add trained LoRA updates (``scale * B @ A``) into ``module``'s own linear weights.

    ``lora`` holds peft-named tensors (``<layer>.lora_A.<adapter>.weight`` and
    ``lora_B``) as the training module has them; ``module`` is a plain (adapter-free)
    copy of the same model, so the result has no LoRA layers left.
    """
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in lora.items():
        match = re.match(r"^(.*)\.lora_([AB])\.[^.]+\.weight$", key)
        if match is None:
            raise VitdexError(f"unexpected LoRA tensor {key}")
        pairs.setdefault(match.group(1), {})[match.group(2)] = tensor
    with torch.no_grad():
        for layer, ab in pairs.items():
            target = module.get_submodule(layer)
            delta = (ab["B"].double() @ ab["A"].double()) * scale
            target.weight += delta.to(target.weight.dtype)


def _place(module: Any, device: torch.device, dtype: torch.dtype) -> None:
    """Move ``module`` to ``device`` and cast it to ``dtype`` (only when it differs)."""
    import logging

    module.to(device)
    if next(module.parameters()).dtype == dtype:
        return
    # diffusers warns about casting after loading even when no module needs fp32 ("[]").
    log = logging.getLogger("diffusers.models.modeling_utils")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        module.to(dtype=dtype)
    finally:
        log.setLevel(level)


def _text_checkpointing(text_encoder: Any, *, enable: bool) -> None:
    """Switch activation checkpointing of a transformers text encoder."""
    # transformers 5.x renamed gradient_* to activation_checkpointing_*; older 5.x lack it.
    if enable:
        if hasattr(text_encoder, "activation_checkpointing_enable"):
            text_encoder.activation_checkpointing_enable({"use_reentrant": False})
        else:
            text_encoder.gradient_checkpointing_enable({"use_reentrant": False})
    elif hasattr(text_encoder, "activation_checkpointing_disable"):
        text_encoder.activation_checkpointing_disable()
    else:
        text_encoder.gradient_checkpointing_disable()


class _Model:
    """The pipeline's trainable parts and what a training step does with them."""

    def __init__(self, config: TrainConfig, base: LoadedBase, device: torch.device) -> None:
        from diffusers import DDPMScheduler

        self.config = config
        self.version: BaseVersion = base.version
        self.device = device
        pipe = base.pipeline
        self.unet = pipe.unet
        self.vae: Any = pipe.vae
        self.scaling_factor = float(pipe.vae.config.scaling_factor)
        self.text_encoders = [getattr(pipe, n) for n in self.version.text_encoders]
        tokenizer_names = ["tokenizer", "tokenizer_2"][: len(self.text_encoders)]
        self.tokenizers = [getattr(pipe, n) for n in tokenizer_names]
        self.sdxl = len(self.text_encoders) == 2
        self.noise_scheduler = DDPMScheduler.from_config(
            pipe.scheduler.config, prediction_type=base.prediction_type
        )
        self.prediction_type = base.prediction_type
        self.lora = bool(config.lora_rank)
        self.precision = config.mixed_precision
        self.dtype = _weight_dtype(self.precision)
        self.trainable: dict[str, list[tuple[str, torch.nn.Parameter]]] = {}
        self.lora_configs: dict[str, Any] = {}
        self._token_ids: dict[str, list[torch.Tensor]] = {}

    # -- setup

    def prepare(self, train_unet: bool, train_text: bool) -> None:
        """Freeze, add LoRA layers, cast and place the modules for the whole run."""
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        cfg = self.config
        modules = {"unet": self.unet}
        for name, te in zip(self.version.text_encoders, self.text_encoders, strict=True):
            modules[name] = te
        trained = {"unet": train_unet}
        trained.update({n: train_text for n in self.version.text_encoders})
        for name, module in modules.items():
            module.requires_grad_(False)
            if trained[name] and self.lora:
                self._add_lora(name, module)
            if trained[name]:
                if self.lora:
                    # Frozen base weights in the compute dtype, LoRA weights fp32.
                    _place(module, self.device, self.dtype)
                    params = [(n, p) for n, p in module.named_parameters() if "lora_" in n]
                    for _, p in params:
                        p.data = p.data.float()
                else:
                    _place(module, self.device, torch.float32)
                    params = list(module.named_parameters())
                self.trainable[name] = params
            else:
                _place(module, self.device, self.dtype)
        # An fp16 VAE overflows on SDXL; bf16 has the range, else stay fp32 (it is small).
        vae_dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.vae.requires_grad_(False)
        _place(self.vae, self.device, vae_dtype)
        self.vae.eval()
        self.unet.set_attn_processor(AttnProcessor2_0() if cfg.sdpa else AttnProcessor())
        for te in self.text_encoders:
            with contextlib.suppress(Exception):  # older models may lack the switch
                te.set_attn_implementation("sdpa" if cfg.sdpa else "eager")
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if train_text:
                for te in self.text_encoders:
                    _text_checkpointing(te, enable=True)
        self.unet.train()

    def _add_lora(self, name: str, module: Any) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        targets = LORA_TARGETS["unet" if name == "unet" else "text_encoder"]
        config = LoraConfig(
            r=int(self.config.lora_rank or 0),
            lora_alpha=self.lora_alpha,
            init_lora_weights="gaussian",
            target_modules=list(targets),
        )
        # peft's own injection, not the models' add_adapter: transformers' wrapper insists
        # on a newer peft than diffusers needs, and the weights are the same either way.
        inject_adapter_in_model(config, module)
        self.lora_configs[name] = config

    @property
    def lora_alpha(self) -> int:
        """LoRA alpha (the update is scaled by alpha / rank)."""
        return int(self.config.lora_alpha or self.config.lora_rank or 0)

    def set_stage(self, stage: Stage) -> None:
        """Switch which parameters take gradients."""
        for name, params in self.trainable.items():
            on = stage.train_unet if name == "unet" else stage.train_text
            for _, p in params:
                p.requires_grad_(on)
        for te in self.text_encoders:
            te.train(stage.train_text)

    def parameters(self, names: Sequence[str]) -> list[torch.nn.Parameter]:
        """The trainable parameters of the named modules, in a fixed order."""
        return [p for n in names for _, p in self.trainable.get(n, [])]

    # -- text

    def token_ids(self, caption: str) -> list[torch.Tensor]:
        """The caption's token ids per tokenizer ([1, 77] each), computed once."""
        if caption not in self._token_ids:
            self._token_ids[caption] = [
                tok(
                    [caption],
                    padding="max_length",
                    max_length=tok.model_max_length,
                    truncation=True,
                    return_tensors="pt",
                ).input_ids
                for tok in self.tokenizers
            ]
        return self._token_ids[caption]

    def encode_text(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Conditioning for ``captions``: hidden states [B, 77, D] and SDXL's pooled vector."""
        ids = [
            torch.cat([self.token_ids(c)[i] for c in captions]).to(self.device)
            for i in range(len(self.tokenizers))
        ]
        if not self.sdxl:
            return self.text_encoders[0](ids[0])[0], None
        # SDXL conditions on both encoders' penultimate layers and the second one's pooled output.
        hidden = []
        pooled = None
        for te, tid in zip(self.text_encoders, ids, strict=True):
            out = te(tid, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]
        return torch.cat(hidden, dim=-1), pooled

    # -- images

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's latent distribution (mean, std), float32, for [B, 3, H, W] pixels."""
        dist = self.vae.encode(pixels.to(self.device, dtype=self.vae.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()

    # -- loss

    def loss(
        self,
        mean: torch.Tensor,
        std: torch.Tensor,
        conditioning: tuple[torch.Tensor, torch.Tensor | None],
        generator: torch.Generator,
        n_instance: int,
    ) -> torch.Tensor:
        """The denoising loss of one micro-batch (instance part + weighted prior part)."""
        from torch.nn.functional import mse_loss

        # All randomness from the micro-batch's own generator, drawn on the CPU in a
        # fixed order: identical for cached and fresh latents, and on any device.
        eps = torch.randn(mean.shape, generator=generator)
        noise = torch.randn(mean.shape, generator=generator)
        horizon = int(self.noise_scheduler.config.num_train_timesteps)
        timesteps = torch.randint(0, horizon, (mean.shape[0],), generator=generator)
        latents = (mean + std * eps.to(self.device)) * self.scaling_factor
        noise = noise.to(self.device)
        timesteps = timesteps.to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        hidden, pooled = conditioning
        kwargs: dict[str, Any] = {}
        if self.sdxl:
            res = float(self.config.resolution or 0)
            # Original size, crop top-left, target size: the images are pre-cropped squares.
            time_ids = torch.tensor([[res, res, 0.0, 0.0, res, res]], device=self.device)
            kwargs["added_cond_kwargs"] = {
                "text_embeds": pooled,
                "time_ids": time_ids.repeat(mean.shape[0], 1),
            }
        with self.autocast():
            pred = self.unet(noisy, timesteps, hidden, **kwargs).sample
        pred, target = pred.float(), target.float()
        if mean.shape[0] == n_instance:
            return mse_loss(pred, target)
        inst = mse_loss(pred[:n_instance], target[:n_instance])
        prior = mse_loss(pred[n_instance:], target[n_instance:])
        return inst + self.config.prior_loss_weight * prior

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed-precision context for forward passes (a no-op at full precision)."""
        if self.precision == "no":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    # -- weights

    def trained_state(self, name: str) -> dict[str, torch.Tensor]:
        """The trained tensors of one module (all weights, or its LoRA weights)."""
        return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in self.trainable[name]}

    def load_trained_state(self, name: str, tensors: Mapping[str, torch.Tensor]) -> None:
        """Put tensors from :meth:`trained_state` back (exactly; names must match)."""
        params = dict(self.trainable[name])
        if set(params) != set(tensors):
            raise VitdexError(f"checkpoint weights of {name} do not match the model")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(tensors[n])


# --------------------------------------------------------------------------- the run


class _Run:
    """One call of :func:`train`: data, model, optimizer, loop, checkpoints, output."""

    def __init__(
        self,
        config: TrainConfig,
        user_config: TrainConfig,
        base: LoadedBase,
        output_dir: Path,
        on_progress: Callable[[TrainProgress], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> None:
        self.config = config
        self.user_config = user_config
        self.base = base
        self.output_dir = output_dir
        self.ckpt_root = output_dir / "checkpoints"
        self.on_progress = on_progress
        self.should_stop = should_stop
        self.device = torch.device(config.device)
        self.stages = plan_stages(config)
        self.total = config.total_steps
        self.notes: list[str] = []
        self.started = time.perf_counter()
        self.model = _Model(config, base, self.device)
        self.optimizer: Any = None
        self.optimizer_key: str | None = None
        self.lr_scheduler: Any = None
        self.scaler: Any = None
        self.optimizer_name = "AdamW"
        self.latent_cache: dict[tuple[str, int, bool], tuple[torch.Tensor, torch.Tensor]] = {}
        self.text_cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.last_loss: float | None = None
        self.step_times: deque[float] = deque(maxlen=20)

    # -- progress

    def report(self, phase: str, step: int, **fields: Any) -> None:
        if self.on_progress is None:
            return
        self.on_progress(
            TrainProgress(
                phase=phase,
                step=step,
                total_steps=self.total,
                elapsed_s=time.perf_counter() - self.started,
                **fields,
            )
        )

    def stop_requested(self) -> bool:
        return self.should_stop is not None and bool(self.should_stop())

    # -- data

    def load_data(self) -> None:
        cfg = self.config
        self.instances = load_examples(cfg.instance_dir, cfg.instance_prompt)
        self.classes: list[Example] = []
        if cfg.prior_preservation and cfg.class_dir:
            self.classes = load_examples(cfg.class_dir, cfg.class_prompt)

    def generate_class_images(self) -> None:
        """Fill ``class_dir`` up to ``num_class_images`` with images from the base model."""
        cfg = self.config
        if not (cfg.prior_preservation and cfg.class_dir and cfg.num_class_images):
            return
        folder = Path(cfg.class_dir).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        have = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        missing = cfg.num_class_images - len(have)
        if missing <= 0:
            return
        pipe = self.base.pipeline
        pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        taken = {p.stem for p in have}
        index = 0
        for made in range(missing):
            if self.stop_requested():
                break
            while f"{index:04d}" in taken:
                index += 1
            name = f"{index:04d}"
            taken.add(name)
            generator = torch.Generator("cpu").manual_seed(_noise_seed(cfg.seed, 10**9 + index))
            with torch.no_grad():
                image = pipe(
                    cfg.class_prompt,
                    height=cfg.resolution,
                    width=cfg.resolution,
                    num_inference_steps=cfg.class_generation_steps,
                    generator=generator,
                ).images[0]
            tmp = folder / f".{name}.png.tmp"
            image.save(tmp, format="PNG")
            tmp.replace(folder / f"{name}.png")
            (folder / f"{name}.txt").write_text(cfg.class_prompt + "\n", encoding="utf-8")
            self.report("generating", 0, message=f"class image {made + 1}/{missing}")
        pipe.to("cpu")

    def draws(self, micro_batch: int) -> tuple[list[tuple[int, Example, Any]], int]:
        """The (stream, example, augmentation) draws of one micro-batch and its instance count."""
        cfg = self.config
        out = []
        streams: list[tuple[int, list[Example]]] = [(0, self.instances)]
        if self.classes:
            streams.append((1, self.classes))
        for stream, examples in streams:
            for j in range(cfg.batch_size):
                position = micro_batch * cfg.batch_size + j
                idx = example_index(cfg.seed, stream, position, len(examples))
                aug = augmentation(
                    cfg.seed,
                    stream,
                    position,
                    random_flip=cfg.random_flip,
                    random_crop=not cfg.center_crop and not cfg.cache_latents,
                )
                out.append((stream, examples[idx], aug))
        return out, cfg.batch_size

    def cache_latents(self) -> None:
        """Encode every image (and its mirror, with flips) once; then free the VAE."""
        from vitdex.training.data import Augmentation

        cfg = self.config
        res = int(cfg.resolution or 0)
        flips = (False, True) if cfg.random_flip else (False,)
        todo = [
            (stream, ex, flip)
            for stream, examples in ((0, self.instances), (1, self.classes))
            for ex in examples
            for flip in flips
        ]
        self.report("caching", 0, message=f"encoding {len(todo)} images")
        for start in range(0, len(todo), 8):
            chunk = todo[start : start + 8]
            pixels = torch.stack(
                [load_pixels(ex.image, res, Augmentation(flip, 0.5, 0.5)) for _, ex, flip in chunk]
            )
            mean, std = self.model.encode_pixels(pixels)
            for i, (stream, ex, flip) in enumerate(chunk):
                self.latent_cache[(str(ex.image), stream, flip)] = (
                    mean[i : i + 1].cpu(),
                    std[i : i + 1].cpu(),
                )
        # The VAE is not needed again: the final pipeline reloads it from the base.
        self.model.vae.to("cpu")

    def latents(self, draws: Sequence[tuple[int, Example, Any]]) -> tuple[torch.Tensor, ...]:
        if self.config.cache_latents:
            pairs = [self.latent_cache[(str(ex.image), s, aug.flip)] for s, ex, aug in draws]
            mean = torch.cat([m for m, _ in pairs]).to(self.device)
            std = torch.cat([s for _, s in pairs]).to(self.device)
            return mean, std
        res = int(self.config.resolution or 0)
        pixels = torch.stack([load_pixels(ex.image, res, aug) for _, ex, aug in draws])
        return self.model.encode_pixels(pixels)

    def conditioning(
        self, captions: Sequence[str], train_text: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if train_text:
            with self.model.autocast():
                return self.model.encode_text(captions)
        hidden = torch.cat([self.text_cache[c][0] for c in captions])
        pooled_parts = [self.text_cache[c][1] for c in captions]
        pooled = None
        if all(p is not None for p in pooled_parts):
            pooled = torch.cat([p for p in pooled_parts if p is not None])
        return hidden, pooled

    def cache_text(self) -> None:
        """Encode every caption once: the text encoders are frozen from here on."""
        if self.text_cache:
            return
        captions = captions_of([*self.instances, *self.classes])
        with torch.no_grad(), self.model.autocast():
            for caption in captions:
                self.text_cache[caption] = self.model.encode_text([caption])

    # -- optimizer

    def make_optimizer(self, stage: Stage) -> None:
        cfg = self.config
        groups = []
        if stage.optimizer in ("unet", "joint"):
            groups.append({"params": self.model.parameters(["unet"]), "lr": cfg.learning_rate})
        if stage.optimizer in ("text_encoder", "joint"):
            groups.append(
                {
                    "params": self.model.parameters(self.model.version.text_encoders),
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
                self.optimizer_name = "AdamW8bit"
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
        self.optimizer_key = stage.optimizer
        fp16 = cfg.mixed_precision == "fp16"
        self.scaler = torch.amp.GradScaler(self.device.type) if fp16 else None

    # -- checkpoints

    def save_checkpoint(self, step: int) -> Path:
        """Write a resumable checkpoint for ``step`` atomically; prune old ones."""
        from safetensors.torch import save_file

        self.ckpt_root.mkdir(parents=True, exist_ok=True)
        name = f"step-{step:08d}"
        tmp = self.ckpt_root / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        weights = []
        for module in self.model.trainable:
            # Modules no stage has touched yet equal the base; they are not stored.
            touched = any(
                s.start < step and (s.train_unet if module == "unet" else s.train_text)
                for s in self.stages
            )
            if touched:
                save_file(self.model.trained_state(module), str(tmp / f"{module}.safetensors"))
                weights.append(module)
        state = {
            "format": _STATE_FORMAT,
            "step": step,
            "weights": weights,
            "optimizer_key": self.optimizer_key,
            "optimizer_name": self.optimizer_name,
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler else None,
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": _rng_state(),
            "loss": self.last_loss,
            # The data position is not stored: it is a function of the config and step.
            "config": self.config.to_dict(),
        }
        torch.save(state, tmp / "state.pt")
        (tmp / "config.json").write_text(
            json.dumps(self.config.to_dict(), indent=2) + "\n", encoding="utf-8"
        )
        target = self.ckpt_root / name
        _publish(tmp, target)
        for _, old in list_checkpoints(self.output_dir)[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def restore(self, checkpoint: Path) -> tuple[int, dict[str, Any]]:
        """Load a checkpoint's weights; returns its step and state (optimizer etc. later)."""
        from safetensors.torch import load_file

        state: dict[str, Any] = torch.load(
            checkpoint / "state.pt", map_location="cpu", weights_only=True
        )
        if state.get("format") != _STATE_FORMAT:
            raise ConfigError(f"{checkpoint} was written by an incompatible version")
        saved = TrainConfig.from_dict(state["config"])
        changed = config_differences(saved, self.config)
        if changed:
            raise ConfigError(
                f"{self.output_dir} holds a run with other settings ({', '.join(changed)}); "
                "use a new output folder or the same settings"
            )
        for module in state["weights"]:
            tensors = load_file(str(checkpoint / f"{module}.safetensors"))
            self.model.load_trained_state(module, tensors)
        self.last_loss = state.get("loss")
        return int(state["step"]), state

    # -- loop

    def enter_stage(self, stage: Stage, resume_state: Mapping[str, Any] | None) -> None:
        self.model.set_stage(stage)
        if self.optimizer_key != stage.optimizer:
            self.optimizer = None
            self.make_optimizer(stage)
            if resume_state is not None and resume_state.get("optimizer_key") == stage.optimizer:
                if resume_state.get("optimizer_name", "AdamW") != self.optimizer_name:
                    raise ConfigError(
                        f"the checkpoint used {resume_state['optimizer_name']} but this "
                        f"machine runs {self.optimizer_name}; resume where it was trained"
                    )
                self.optimizer.load_state_dict(resume_state["optimizer"])
                self.lr_scheduler.load_state_dict(resume_state["lr_scheduler"])
                if self.scaler is not None and resume_state.get("grad_scaler"):
                    self.scaler.load_state_dict(resume_state["grad_scaler"])
        if not any(s.train_text for s in self.stages if s.end > stage.start):
            self.cache_text()

    def train_step(self, step: int, stage: Stage) -> float:
        cfg = self.config
        accum = cfg.gradient_accumulation_steps
        total_loss = 0.0
        for a in range(accum):
            micro = step * accum + a
            draws, n_instance = self.draws(micro)
            mean, std = self.latents(draws)
            captions = [ex.caption for _, ex, _ in draws]
            cond = self.conditioning(captions, stage.train_text)
            generator = torch.Generator("cpu").manual_seed(_noise_seed(cfg.seed, micro))
            loss = self.model.loss(mean, std, cond, generator, n_instance)
            scaled = loss / accum
            if self.scaler is not None:
                self.scaler.scale(scaled).backward()
            else:
                scaled.backward()
            # One device sync per micro-batch, after backward; a bad loss still stops the
            # run before the optimizer applies anything.
            value = float(loss.detach())
            if not math.isfinite(value):
                raise VitdexError(
                    f"the loss became {value} at step {step + 1}; lower the learning "
                    "rate or use bf16/fp32 instead of fp16"
                )
            total_loss += value / accum
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if cfg.max_grad_norm > 0:
            # Frozen parameters have no gradient; clipping skips them.
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total_loss

    def run(self) -> TrainResult:
        cfg = self.config
        _seed_everything(cfg.seed)
        _check_model_resolution(self.base.pipeline, int(cfg.resolution or 0))
        self.generate_class_images()
        # Generation may draw from the global generators; start the run from the seed again.
        _seed_everything(cfg.seed)
        self.load_data()
        if self.stop_requested():
            found = list_checkpoints(self.output_dir)
            return self.stopped(found[-1][0] if found else 0, found[-1][1] if found else None, None)
        self.model.prepare(
            train_unet=any(s.train_unet for s in self.stages),
            train_text=any(s.train_text for s in self.stages),
        )
        # Leftovers of a save that was killed halfway.
        if self.ckpt_root.is_dir():
            for tmp in self.ckpt_root.glob(".tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True)
        step, resume_state, resumed_from = 0, None, None
        checkpoint = latest_checkpoint(self.output_dir)
        if checkpoint is not None:
            step, resume_state = self.restore(checkpoint)
            resumed_from = step
        if cfg.cache_latents:
            self.cache_latents()
        last_saved = step if checkpoint is not None else None
        if resume_state is not None:
            _set_rng_state(resume_state["rng"])
        self.report("training", step, message="resumed" if resumed_from is not None else "")
        stage: Stage | None = None
        while step < self.total:
            current = stage_at(self.stages, step)
            if current != stage:
                stage = current
                self.enter_stage(stage, resume_state if step == resumed_from else None)
            if self.stop_requested():
                break
            tick = time.perf_counter()
            self.last_loss = self.train_step(step, stage)
            step += 1
            self.step_times.append(time.perf_counter() - tick)
            rate = len(self.step_times) / sum(self.step_times)
            self.report(
                "training",
                step,
                stage=stage.name,
                loss=self.last_loss,
                it_per_s=rate,
                lr=float(self.lr_scheduler.get_last_lr()[0]),
                eta_s=(self.total - step) / rate,
            )
            if cfg.save_every and step % cfg.save_every == 0 and step < self.total:
                path = self.save_checkpoint(step)
                last_saved = step
                self.report("checkpoint", step, stage=stage.name, checkpoint=str(path))
        if step < self.total:
            # Nothing to save before the first step, or right after a save.
            fresh = step > 0 and last_saved != step
            saved = self.save_checkpoint(step) if fresh else latest_checkpoint(self.output_dir)
            return self.stopped(step, saved, resumed_from)
        return self.finish(step, resumed_from)

    def stopped(self, step: int, path: Path | None, resumed_from: int | None) -> TrainResult:
        self.report("stopped", step, checkpoint=str(path) if path else None)
        return TrainResult(
            final_dir=None,
            steps=step,
            final_loss=self.last_loss,
            config=self.config,
            completed=False,
            checkpoint_dir=path,
            resumed_from=resumed_from,
            optimizer=self.optimizer_name,
            notes=self.notes,
            elapsed_s=time.perf_counter() - self.started,
        )

    # -- output

    def finish(self, step: int, resumed_from: int | None) -> TrainResult:
        """Write the trained pipeline (and LoRA file) and the run's result."""
        self.report("saving", step)
        cfg = self.config
        model = self.model
        for module in [model.unet, *model.text_encoders]:
            module.to("cpu")
        lora_file = None
        components: dict[str, Any] = {}
        if model.lora:
            lora_file = self.write_lora()
        else:
            if "unet" in model.trainable:
                model.unet.disable_gradient_checkpointing()
                components["unet"] = model.unet
            for name, te in zip(model.version.text_encoders, model.text_encoders, strict=True):
                if name in model.trainable:
                    _text_checkpointing(te, enable=False)
                    components[name] = te
        # A fresh load gives the frozen parts back in full precision (they ran in the
        # compute dtype here); trained parts are passed in, LoRA updates merged into fp32.
        fresh = load_base(
            cfg.base_model,
            version=cfg.version,
            config=cfg.base_config,
            revision=cfg.revision,
            force=True,
            components=components,
        ).pipeline
        if model.lora:
            scale = model.lora_alpha / int(cfg.lora_rank or 1)
            for name in model.trainable:
                fuse_lora(getattr(fresh, name), model.trained_state(name), scale)
        final = self.output_dir / "final"
        tmp = self.output_dir / f".tmp-final-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        fresh.save_pretrained(str(tmp), safe_serialization=True)
        _publish(tmp, final)
        result = TrainResult(
            final_dir=final,
            steps=step,
            final_loss=self.last_loss,
            config=self.config,
            completed=True,
            checkpoint_dir=latest_checkpoint(self.output_dir),
            lora_file=lora_file,
            resumed_from=resumed_from,
            optimizer=self.optimizer_name,
            notes=self.notes,
            elapsed_s=time.perf_counter() - self.started,
        )
        _write_json_atomic(
            self.output_dir / "result.json",
            {**result.to_dict(), "user_config": self.user_config.to_dict()},
        )
        self.report("done", step, loss=self.last_loss, message=str(final))
        return result

    def write_lora(self) -> Path:
        """Save the LoRA weights in diffusers' format (``output_dir/lora``)."""
        from diffusers.utils.state_dict_utils import convert_state_dict_to_diffusers

        model = self.model
        arguments = {
            "unet": "unet_lora_layers",
            "text_encoder": "text_encoder_lora_layers",
            "text_encoder_2": "text_encoder_2_lora_layers",
        }
        layers: dict[str, Any] = {}
        for name in model.trainable:
            # peft's format names tensors without the adapter name.
            peft_state = {
                key.replace(".default.", "."): value
                for key, value in model.trained_state(name).items()
            }
            layers[arguments[name]] = convert_state_dict_to_diffusers(peft_state)
            # Rank and alpha travel in the file's metadata; without them loaders assume
            # alpha = rank and scale the update wrongly.
            metadata = arguments[name].replace("_layers", "_adapter_metadata")
            layers[metadata] = model.lora_configs[name].to_dict()
        cls = type(self.base.pipeline)
        target = self.output_dir / "lora"
        tmp = self.output_dir / f".tmp-lora-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        cls.save_lora_weights(str(tmp), safe_serialization=True, **layers)
        _publish(tmp, target)
        return target / "pytorch_lora_weights.safetensors"


# --------------------------------------------------------------------------- entry points


def _finished(output_dir: Path, config: TrainConfig) -> TrainResult | None:
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
    )


def train(
    config: TrainConfig,
    output_dir: str | Path,
    *,
    on_progress: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Run (or resume, or return the finished result of) a DreamBooth run in ``output_dir``.

    Resumes from the newest complete checkpoint in ``output_dir/checkpoints`` when there is
    one (its settings must match, except ``save_every``/``keep_checkpoints``). Calls
    ``on_progress`` after every optimizer step and at phase changes; checks ``should_stop``
    before every step and, when it returns True, saves a checkpoint and returns a result
    with ``completed=False``. On completion the pipeline is at ``output_dir/final`` (for
    LoRA runs with the LoRA fused in, plus ``output_dir/lora``).
    """
    config.validate()
    out = Path(output_dir).expanduser()
    done = _finished(out, config)
    if done is not None:
        return done
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if on_progress is not None:
        on_progress(TrainProgress(phase="loading", step=0, total_steps=config.total_steps))
    from vitdex.indexer.embedder import resolve_device

    device = resolve_device(config.device)
    base = load_base(
        config.base_model,
        version=config.version,
        config=config.base_config,
        revision=config.revision,
        force=config.force,
    )
    resolved = _resolve_config(config, base, device)
    run = _Run(resolved, config, base, out, on_progress, should_stop)
    run.started = started
    return run.run()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vitdex.training.dreambooth CONFIG.json OUTPUT_DIR``: train, print JSON lines."""
    parser = argparse.ArgumentParser(
        prog="python -m vitdex.training.dreambooth",
        description="Run or resume a DreamBooth training run from a JSON config.",
    )
    parser.add_argument("config", type=Path, help="TrainConfig as JSON")
    parser.add_argument("output_dir", type=Path)
    args = parser.parse_args(argv)

    def emit(progress: TrainProgress) -> None:
        print(json.dumps(progress.to_dict()), flush=True)

    try:
        config = TrainConfig.from_dict(json.loads(args.config.read_text(encoding="utf-8")))
        result = train(config, args.output_dir, on_progress=emit)
    except VitdexError as exc:
        print(json.dumps({"error": exc.message}), flush=True)
        return exc.exit_code
    print(json.dumps({"result": result.to_dict()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
