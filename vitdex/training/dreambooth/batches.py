"""What each micro-batch of a DreamBooth run trains on, and the class images it needs.

Which example, flip and crop a micro-batch draws, and the noise it gets, are pure
functions of (seed, position): a resumed run needs only its step to draw exactly what an
uninterrupted one would. Latents of every image (and its mirror) can be encoded once up
front, and captions are encoded once as soon as no later stage trains the text encoders.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitdex.training.config import TrainConfig
from vitdex.training.data import (
    IMAGE_SUFFIXES,
    Augmentation,
    Example,
    augmentation,
    captions_of,
    example_index,
    load_examples,
    load_pixels,
)
from vitdex.training.dreambooth.model import Model

__all__ = ["Batches", "Draw", "generate_class_images", "noise_seed"]

#: One drawn example: its stream (0 instance, 1 class), the example and its augmentation.
Draw = tuple[int, Example, Augmentation]


def noise_seed(seed: int, micro_batch: int) -> int:
    """The seed of micro-batch ``micro_batch``'s own noise generator.

    A distinct, reproducible generator per micro-batch: resuming needs no generator state.
    """
    return int(np.random.SeedSequence([seed, micro_batch, 7]).generate_state(1, np.uint64)[0] >> 1)


class Batches:
    """The examples of a run and, per micro-batch, its draws, latents and conditioning."""

    def __init__(self, config: TrainConfig, model: Model) -> None:
        self.config = config
        self.model = model
        self.device = model.device
        self.instances: list[Example] = []
        self.classes: list[Example] = []
        self.latent_cache: dict[tuple[str, int, bool], tuple[torch.Tensor, torch.Tensor]] = {}
        self.text_cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def load(self) -> None:
        """Read the instance (and class) folders' images and captions."""
        cfg = self.config
        self.instances = load_examples(cfg.instance_dir, cfg.instance_prompt)
        self.classes = []
        if cfg.prior_preservation and cfg.class_dir:
            self.classes = load_examples(cfg.class_dir, cfg.class_prompt)

    def draws(self, micro_batch: int) -> tuple[list[Draw], int]:
        """The (stream, example, augmentation) draws of one micro-batch and its instance count."""
        cfg = self.config
        out: list[Draw] = []
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

    def cache_latents(self, say: Callable[[str], None]) -> None:
        """Encode every image (and its mirror, with flips) once; then free the VAE."""
        cfg = self.config
        res = int(cfg.resolution or 0)
        flips = (False, True) if cfg.random_flip else (False,)
        todo = [
            (stream, ex, flip)
            for stream, examples in ((0, self.instances), (1, self.classes))
            for ex in examples
            for flip in flips
        ]
        say(f"encoding {len(todo)} images")
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

    def latents(self, draws: Sequence[Draw]) -> tuple[torch.Tensor, ...]:
        """The latent distributions (mean, std) of the drawn images, on the device."""
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
        """Text conditioning of the captions: encoded now while the text encoders train,
        else from the cache."""
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


def generate_class_images(
    config: TrainConfig,
    pipe: Any,
    device: torch.device,
    should_stop: Callable[[], bool],
    say: Callable[[str], None],
) -> None:
    """Fill ``class_dir`` up to ``num_class_images`` with images from the base pipeline."""
    if not (config.prior_preservation and config.class_dir and config.num_class_images):
        return
    folder = Path(config.class_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    have = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    missing = config.num_class_images - len(have)
    if missing <= 0:
        return
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    taken = {p.stem for p in have}
    index = 0
    for made in range(missing):
        if should_stop():
            break
        while f"{index:04d}" in taken:
            index += 1
        name = f"{index:04d}"
        taken.add(name)
        generator = torch.Generator("cpu").manual_seed(noise_seed(config.seed, 10**9 + index))
        with torch.no_grad():
            image = pipe(
                config.class_prompt,
                height=config.resolution,
                width=config.resolution,
                num_inference_steps=config.class_generation_steps,
                generator=generator,
            ).images[0]
        tmp = folder / f".{name}.png.tmp"
        image.save(tmp, format="PNG")
        tmp.replace(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(config.class_prompt + "\n", encoding="utf-8")
        say(f"class image {made + 1}/{missing}")
    pipe.to("cpu")
