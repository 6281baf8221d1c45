"""What each micro-batch of a DreamBooth run trains on, and the class images it needs.

Which example, flip and crop a micro-batch draws, its caption variant and the noise it
gets, are pure functions of (seed, position): a resumed run needs only its step to draw
exactly what an uninterrupted one would. Latents of every image (and its mirror) can be
encoded once up front, and captions are encoded once as soon as no later stage trains the
text encoders.

With aspect-ratio buckets (``config.buckets``) every micro-batch comes from one bucket
(its tensors must share a shape): each epoch permutes every bucket's images, cuts them
into full batches and shuffles the batches (:func:`bucket_groups`); the class images of a
batch are cut to its bucket too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitdex.errors import ConfigError
from vitdex.training.buckets import Bucket, assign_bucket
from vitdex.training.captions import transform_caption
from vitdex.training.config import TrainConfig
from vitdex.training.data import (
    IMAGE_SUFFIXES,
    Augmentation,
    Example,
    augmentation,
    captions_of,
    example_index,
    image_size,
    load_examples,
    load_pixels,
)
from vitdex.training.dreambooth.model import Model

__all__ = [
    "Batches",
    "Draw",
    "bucket_batch",
    "bucket_groups",
    "generate_class_images",
    "noise_seed",
]

#: One drawn example: its stream (0 instance, 1 class), the example and its augmentation.
Draw = tuple[int, Example, Augmentation]
#: Encoded captions kept at most (shuffled tag orders are encoded on demand).
TEXT_CACHE_LIMIT = 4096


def noise_seed(seed: int, micro_batch: int) -> int:
    """The seed of micro-batch ``micro_batch``'s own noise generator.

    A distinct, reproducible generator per micro-batch: resuming needs no generator state.
    """
    return int(np.random.SeedSequence([seed, micro_batch, 7]).generate_state(1, np.uint64)[0] >> 1)


def bucket_groups(
    seed: int, epoch: int, members: Mapping[Bucket, Sequence[int]], batch_size: int
) -> list[tuple[Bucket, list[int]]]:
    """The micro-batches of one epoch of bucketed instance draws, in training order.

    ``members`` maps each bucket to its example indices. Per bucket (in sorted order) the
    examples are permuted and cut into groups of ``batch_size``; a short last group is
    filled with other examples of the same bucket, so every batch is full and of one
    shape. Then the groups are shuffled. The number of groups is the same every epoch,
    and everything is drawn from one generator seeded by (seed, 0, epoch, 2).
    """
    rng = np.random.default_rng([seed, 0, epoch, 2])
    groups: list[tuple[Bucket, list[int]]] = []
    for bucket in sorted(members):
        order = [int(members[bucket][i]) for i in rng.permutation(len(members[bucket]))]
        for start in range(0, len(order), batch_size):
            group = order[start : start + batch_size]
            need = batch_size - len(group)
            if need:
                others = order[:start]
                pool = others if len(others) >= need else order
                picks = rng.choice(len(pool), need, replace=len(pool) < need)
                group += [pool[int(i)] for i in picks]
            groups.append((bucket, group))
    return [groups[int(i)] for i in rng.permutation(len(groups))]


def groups_per_epoch(members: Mapping[Bucket, Sequence[int]], batch_size: int) -> int:
    """How many micro-batches one epoch of :func:`bucket_groups` has."""
    return sum(-(-len(m) // batch_size) for m in members.values() if m)


def bucket_batch(
    seed: int, micro_batch: int, members: Mapping[Bucket, Sequence[int]], batch_size: int
) -> tuple[Bucket, list[int]]:
    """The bucket and example indices of micro-batch ``micro_batch`` (without replaying
    the ones before it)."""
    epoch, group = divmod(micro_batch, groups_per_epoch(members, batch_size))
    return bucket_groups(seed, epoch, members, batch_size)[group]


@dataclasses.dataclass
class _Plan:
    """The instances' buckets, computed for one list of instances."""

    images: tuple[str, ...]
    #: Bucket index -> example indices.
    members: dict[Bucket, list[int]]
    epoch: int = -1
    groups: list[tuple[Bucket, list[int]]] = dataclasses.field(default_factory=list)


class Batches:
    """The examples of a run and, per micro-batch, its draws, latents and conditioning."""

    def __init__(self, config: TrainConfig, model: Model) -> None:
        self.config = config
        self.model = model
        self.device = model.device
        self.instances: list[Example] = []
        self.classes: list[Example] = []
        #: (image, stream, flip, bucket or None for the square) -> latent (mean, std).
        self.latent_cache: dict[
            tuple[str, int, bool, Bucket | None], tuple[torch.Tensor, torch.Tensor]
        ] = {}
        self.text_cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._pinned: set[str] = set()
        self._buckets: dict[str, Bucket] = {}
        self._plan: _Plan | None = None

    def load(self) -> None:
        """Read the instance (and class) folders' images and captions."""
        cfg = self.config
        self.instances = load_examples(cfg.instance_dir, cfg.instance_prompt)
        self.classes = []
        if cfg.prior_preservation and cfg.class_dir:
            self.classes = load_examples(cfg.class_dir, cfg.class_prompt)

    # -- buckets

    def bucket_of(self, example: Example) -> Bucket:
        """The aspect-ratio bucket ``example`` trains in (its image header, read once)."""
        key = str(example.image)
        if key not in self._buckets:
            width, height = image_size(example.image)
            self._buckets[key] = assign_bucket(
                width,
                height,
                int(self.config.resolution or 0),
                max_upscale=self.config.bucket_max_upscale,
            )
        return self._buckets[key]

    def plan(self) -> _Plan:
        """The instances' buckets, from :attr:`instances` as they are now.

        Lazy on purpose: the loop may replace :attr:`instances` after :meth:`load` (to
        hold images out for validation); the plan follows what is trained on.
        """
        images = tuple(str(ex.image) for ex in self.instances)
        if self._plan is None or self._plan.images != images:
            members: dict[Bucket, list[int]] = {}
            for i, ex in enumerate(self.instances):
                members.setdefault(self.bucket_of(ex), []).append(i)
            self._plan = _Plan(images, members)
        return self._plan

    def _bucket_draw(self, micro_batch: int) -> tuple[Bucket, list[int]]:
        plan = self.plan()
        if not plan.members:
            raise ConfigError("no instance images left to train on")
        batch = self.config.batch_size
        epoch, group = divmod(micro_batch, groups_per_epoch(plan.members, batch))
        if plan.epoch != epoch:
            plan.groups = bucket_groups(self.config.seed, epoch, plan.members, batch)
            plan.epoch = epoch
        return plan.groups[group]

    def _draw_bucket(self, draws: Sequence[Draw]) -> Bucket | None:
        """The shape a micro-batch is cut to: its instances' bucket (None: the square)."""
        if not self.config.buckets or not draws:
            return None
        first = next((ex for stream, ex, _ in draws if stream == 0), draws[0][1])
        return self.bucket_of(first)

    # -- draws

    def draws(self, micro_batch: int) -> tuple[list[Draw], int]:
        """The (stream, example, augmentation) draws of one micro-batch and its instance
        count; each example's caption is the variant this draw trains with."""
        cfg = self.config
        out: list[Draw] = []
        streams: list[tuple[int, list[Example]]] = [(0, self.instances)]
        if self.classes:
            streams.append((1, self.classes))
        chosen = self._bucket_draw(micro_batch)[1] if cfg.buckets else None
        for stream, examples in streams:
            for j in range(cfg.batch_size):
                position = micro_batch * cfg.batch_size + j
                if stream == 0 and chosen is not None:
                    idx = chosen[j]
                else:
                    idx = example_index(cfg.seed, stream, position, len(examples))
                aug = augmentation(
                    cfg.seed,
                    stream,
                    position,
                    random_flip=cfg.random_flip,
                    random_crop=not cfg.center_crop and not cfg.cache_latents,
                )
                example = examples[idx]
                caption = transform_caption(
                    example.caption,
                    seed=cfg.seed,
                    stream=stream,
                    position=position,
                    dropout=cfg.caption_dropout,
                    shuffle=cfg.shuffle_tags,
                    keep_tokens=cfg.keep_tokens,
                )
                if caption != example.caption:
                    example = dataclasses.replace(example, caption=caption)
                out.append((stream, example, aug))
        return out, cfg.batch_size

    # -- latents

    def cache_latents(self, say: Callable[[str], None]) -> None:
        """Encode every image (and its mirror, with flips) once; then free the VAE.

        With buckets each instance is encoded at its bucket, and each class image at
        every bucket the instances use (a batch's class images share its shape).
        """
        cfg = self.config
        res = int(cfg.resolution or 0)
        flips = (False, True) if cfg.random_flip else (False,)
        todo: dict[Bucket | None, list[tuple[int, Example, bool]]] = {}
        used: list[Bucket] = []
        if cfg.buckets:
            used = sorted(self.plan().members)
            for ex in self.instances:
                todo.setdefault(self.bucket_of(ex), []).extend((0, ex, f) for f in flips)
            for bucket in used:
                todo.setdefault(bucket, []).extend((1, ex, f) for ex in self.classes for f in flips)
        else:
            todo[None] = [
                (stream, ex, flip)
                for stream, examples in ((0, self.instances), (1, self.classes))
                for ex in examples
                for flip in flips
            ]
        count = sum(len(items) for items in todo.values())
        message = f"encoding {count} images"
        if cfg.buckets:
            message += f" in {len(used)} buckets"
            if self.classes:
                message += f" ({len(self.classes)} class images at each of the {len(used)})"
        say(message)
        for shape, items in todo.items():
            for start in range(0, len(items), 8):
                chunk = items[start : start + 8]
                pixels = torch.stack(
                    [
                        load_pixels(ex.image, res, Augmentation(flip, 0.5, 0.5), shape)
                        for _, ex, flip in chunk
                    ]
                )
                mean, std = self.model.encode_pixels(pixels)
                for i, (stream, ex, flip) in enumerate(chunk):
                    self.latent_cache[(str(ex.image), stream, flip, shape)] = (
                        mean[i : i + 1].cpu(),
                        std[i : i + 1].cpu(),
                    )
        # The VAE is not needed again: the final pipeline reloads it from the base.
        self.model.vae.to("cpu")

    def latents(self, draws: Sequence[Draw]) -> tuple[torch.Tensor, ...]:
        """The latent distributions (mean, std) of the drawn images, on the device."""
        bucket = self._draw_bucket(draws)
        if self.config.cache_latents:
            pairs = [
                self.latent_cache[(str(ex.image), s, aug.flip, bucket)] for s, ex, aug in draws
            ]
            mean = torch.cat([m for m, _ in pairs]).to(self.device)
            std = torch.cat([s for _, s in pairs]).to(self.device)
            return mean, std
        res = int(self.config.resolution or 0)
        pixels = torch.stack([load_pixels(ex.image, res, aug, bucket) for _, ex, aug in draws])
        return self.model.encode_pixels(pixels)

    # -- text

    def conditioning(
        self, captions: Sequence[str], train_text: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text conditioning of the captions: encoded now while the text encoders train,
        else from the cache (a caption variant not seen yet is encoded once, then kept)."""
        if train_text:
            with self.model.autocast():
                return self.model.encode_text(captions)
        for caption in captions:
            if caption not in self.text_cache:
                self._encode_frozen(caption)
        hidden = torch.cat([self.text_cache[c][0] for c in captions])
        pooled_parts = [self.text_cache[c][1] for c in captions]
        pooled = None
        if all(p is not None for p in pooled_parts):
            pooled = torch.cat([p for p in pooled_parts if p is not None])
        return hidden, pooled

    def _encode_frozen(self, caption: str) -> None:
        """Encode one caption with the frozen text encoders into the bounded cache."""
        if len(self.text_cache) >= TEXT_CACHE_LIMIT:
            # Shuffled variants come and go; the dataset's own captions stay.
            oldest = next((c for c in self.text_cache if c not in self._pinned), None)
            if oldest is not None:
                del self.text_cache[oldest]
        with torch.no_grad(), self.model.autocast():
            self.text_cache[caption] = self.model.encode_text([caption])

    def cache_text(self) -> None:
        """Encode every caption once: the text encoders are frozen from here on.

        The empty caption too when captions are dropped.
        """
        if self.text_cache:
            return
        captions = captions_of([*self.instances, *self.classes])
        if self.config.caption_dropout > 0 and "" not in captions:
            captions.append("")
        self._pinned = set(captions)
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
