"""The model side of a DreamBooth run: the base's parts, what is trained, and the loss.

:class:`Model` holds the pipeline's UNet, VAE, text encoder(s), tokenizer(s) and a DDPM
noise scheduler; it freezes them, adds LoRA adapters (peft) where the run trains LoRA,
places and casts each part for mixed precision, encodes captions and pixels, computes the
denoising loss of a micro-batch and hands out (and takes back) the trained tensors for
checkpoints. :func:`fuse_lora` merges trained LoRA updates into a plain copy for saving.
:func:`resolve_config` also decides how a full SDXL fine-tune runs (UNet only, frozen
text encoders whose outputs are cached, checkpointing, Adafactor) and whether the device
can hold it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from vitdex.devices import default_precision
from vitdex.errors import ConfigError, VitdexError
from vitdex.training.bases import BaseVersion, LoadedBase, check_full_finetune, check_resolution
from vitdex.training.config import Stage, TrainConfig

__all__ = [
    "LORA_TARGETS",
    "Model",
    "check_model_resolution",
    "fuse_lora",
    "resolve_config",
    "text_checkpointing",
]

#: Linear layers that get LoRA adapters: the attention projections.
LORA_TARGETS = {
    "unet": ("to_k", "to_q", "to_v", "to_out.0"),
    "text_encoder": ("q_proj", "k_proj", "v_proj", "out_proj"),
}


def _resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> the device's fastest native precision (``no`` for fp32)."""
    if name != "auto":
        return name
    precision = default_precision(device)
    return "no" if precision == "fp32" else precision


def _weight_dtype(precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)


def _total_memory(device: torch.device) -> int | None:
    """Total memory of a CUDA device in bytes (None elsewhere)."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.get_device_properties(device).total_memory)


def resolve_config(config: TrainConfig, base: LoadedBase, device: torch.device) -> TrainConfig:
    """``config`` with version, resolution, precision, LoRA rank and device filled in.

    A full fine-tune of a version that trains as LoRA by default (SDXL) must fit the
    device (:func:`~vitdex.training.bases.check_full_finetune`) and runs the memory-lean
    way: UNet only (``text_encoder_steps`` 0; the frozen encoders' outputs are cached),
    gradient checkpointing on, and Adafactor where plain AdamW was left in place
    (AdamW's 16 bytes per parameter are 41 GB for SDXL's UNet; ``adamw8bit`` is kept).
    """
    version = base.version
    resolution = config.resolution or version.resolution
    check_resolution(version, resolution, force=config.force)
    lora_rank = config.lora_rank
    if lora_rank is None:
        lora_rank = 0 if version.full_finetune else version.default_lora_rank
    changes: dict[str, Any] = {}
    if lora_rank == 0 and not version.full_finetune:
        check_full_finetune(version, device.type, _total_memory(device), force=config.force)
        changes = {"text_encoder_steps": 0, "gradient_checkpointing": True}
        if config.optimizer == "adamw" and not config.use_8bit_adam:
            changes["optimizer"] = "adafactor"
    precision = _resolve_precision(config.mixed_precision, device)
    if config.fused_backward and precision == "fp16":
        raise ConfigError(
            "fused_backward cannot use fp16: its loss scaling must see every gradient "
            "before any weight changes; use bf16 or no mixed precision"
        )
    return dataclasses.replace(
        config,
        version=version.name,
        resolution=resolution,
        lora_rank=lora_rank,
        mixed_precision=precision,
        device=str(device),
        **changes,
    )


def check_model_resolution(pipe: Any, resolution: int) -> None:
    """Refuse a resolution the VAE and UNet cannot downsample evenly (it fails mid-step)."""
    vae_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    unet_factor = 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    multiple = vae_factor * unet_factor
    if resolution % multiple:
        raise ConfigError(
            f"resolution {resolution} is not a multiple of {multiple}, which this model's "
            "VAE and UNet downsampling need"
        )


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


def text_checkpointing(text_encoder: Any, *, enable: bool) -> None:
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


class Model:
    """The pipeline's trainable parts and what a training step does with them."""

    def __init__(self, config: TrainConfig, base: LoadedBase, device: torch.device) -> None:
        from diffusers import DDPMScheduler

        self.config = config
        self.version: BaseVersion = base.version
        self.device = device
        pipe = base.pipeline
        #: The pipeline's class: LoRA files are saved in its format.
        self.pipeline_class = type(pipe)
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
                    text_checkpointing(te, enable=True)
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
            # Original size, crop top-left, target size (height, width): the batch's
            # bucket (a square unless the run uses aspect-ratio buckets).
            factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
            h, w = float(mean.shape[-2] * factor), float(mean.shape[-1] * factor)
            time_ids = torch.tensor([[h, w, 0.0, 0.0, h, w]], device=self.device)
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
