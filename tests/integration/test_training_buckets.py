"""Aspect-ratio buckets and per-draw captions in real DreamBooth runs (tiny SD, 64 px).

The instance folder mixes portrait, landscape and square photos; each batch must come
from one bucket (its class images cut to that shape too), cached and fresh latents must
train alike, and a stopped run must resume to exactly the uninterrupted result.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vitdex.training.bases import load_base
from vitdex.training.buckets import assign_bucket
from vitdex.training.dreambooth import TrainConfig, TrainProgress, train
from vitdex.training.dreambooth.batches import Batches
from vitdex.training.dreambooth.model import Model, resolve_config

RES = 64
#: Upright sizes of the instance photos: two portraits, two landscapes, two squares.
SIZES = [(64, 128), (128, 64), (96, 96), (60, 130), (130, 60), (100, 100)]
CAPTION = "sks dog, red collar, sitting, grass"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread, as in test_dreambooth: the tiny models gain nothing from more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Mixed-aspect instance photos (one stored sideways with EXIF), square class images."""
    root = tmp_path_factory.mktemp("bucket-data")
    instance, klass = root / "instance", root / "class"
    instance.mkdir()
    klass.mkdir()
    for i, (width, height) in enumerate(SIZES):
        pixels = np.random.default_rng(i).integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        if i == 3:
            # Stored as a landscape, shown as the portrait it is (EXIF orientation 6).
            exif = Image.Exif()
            exif[0x0112] = 6
            image.transpose(Image.Transpose.ROTATE_90).save(
                instance / f"{i:04d}.png", exif=exif.tobytes()
            )
        else:
            image.save(instance / f"{i:04d}.png")
        (instance / f"{i:04d}.txt").write_text(CAPTION)
    for i in range(3):
        pixels = np.random.default_rng(100 + i).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(klass / f"{i:04d}.png")
    return {"instance": instance, "class": klass}


def _config(base: Path, data: dict[str, Path], **changes: Any) -> TrainConfig:
    settings: dict[str, Any] = {
        "base_model": str(base),
        "instance_dir": str(data["instance"]),
        "instance_prompt": "a photo of sks dog",
        "class_prompt": "a photo of a dog",
        "resolution": RES,
        "force": True,
        "steps": 3,
        "text_encoder_steps": 0,
        "learning_rate": 1e-3,
        "mixed_precision": "no",
        "device": "cpu",
        "save_every": 0,
        "seed": 5,
        "buckets": True,
        "batch_size": 2,
        "class_dir": str(data["class"]),
        "prior_preservation": True,
    }
    settings.update(changes)
    return TrainConfig(**settings)


def _batches(config: TrainConfig) -> Batches:
    """The run's Batches on the real (tiny) model, as the loop builds them."""
    base = load_base(config.base_model, force=True)
    resolved = resolve_config(config, base, torch.device("cpu"))
    batches = Batches(resolved, Model(resolved, base, torch.device("cpu")))
    batches.load()
    return batches


def _losses(reports: list[TrainProgress]) -> list[float]:
    return [r.loss for r in reports if r.phase == "training" and r.loss is not None]


def test_every_batch_has_one_shape_and_class_images_follow(
    tiny_sd: Path, data: dict[str, Path]
) -> None:
    config = _config(tiny_sd, data, cache_latents=False, random_flip=True)
    batches = _batches(config)
    expected = {assign_bucket(w, h, RES) for w, h in SIZES}
    assert len(expected) == 3
    # Buckets come from the upright size: the sideways-stored photo is a portrait.
    assert [batches.bucket_of(ex) for ex in batches.instances] == [
        assign_bucket(w, h, RES) for w, h in SIZES
    ]
    # The plan follows the instances as they are at first use: hold one out first.
    batches.instances = batches.instances[:-1]
    per_epoch = len(SIZES) - 1  # buckets of 2, 2 and 1 (the last filled up): 3 groups
    seen: set[str] = set()
    shapes = set()
    for micro in range(3):
        draws, n_instance = batches.draws(micro)
        assert n_instance == 2 and len(draws) == 4
        instance = [ex for stream, ex, _ in draws if stream == 0]
        buckets = {batches.bucket_of(ex) for ex in instance}
        assert len(buckets) == 1
        (bucket,) = buckets
        seen.update(str(ex.image) for ex in instance)
        mean, std = batches.latents(draws)
        # Latents of all four (instances and class images) at the bucket's shape.
        assert mean.shape == (4, 4, bucket[1] // 2, bucket[0] // 2) == std.shape
        shapes.add(bucket)
    assert shapes == expected
    assert len(seen) == per_epoch  # the first epoch drew every kept instance
    assert str(data["instance"] / "0005.png") not in seen


def test_buckets_train_alike_with_cached_and_fresh_latents(
    tmp_path: Path, tiny_sd: Path, data: dict[str, Path]
) -> None:
    losses: dict[bool, list[float]] = {}
    for cache in (True, False):
        reports: list[TrainProgress] = []
        config = _config(tiny_sd, data, cache_latents=cache)
        result = train(config, tmp_path / f"cache-{cache}", on_progress=reports.append)
        assert result.completed and result.steps == 3
        assert result.final_dir is not None
        assert (result.final_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
        losses[cache] = _losses(reports)
        caching = [r.message for r in reports if r.phase == "caching"]
        if cache:
            # 6 instances + 3 class images at each of the 3 buckets the instances use.
            assert caching == ["encoding 15 images in 3 buckets (3 class images at each of the 3)"]
        else:
            assert caching == []
    assert len(losses[True]) == 3 and all(np.isfinite(losses[True]))
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "cache-True" / "final")
    image = pipe(
        "a photo of sks dog",
        height=40,
        width=88,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert image.shape == (40, 88, 3) and np.isfinite(image).all()


def test_bucketed_stop_and_resume_is_exact(
    tmp_path: Path, tiny_sd: Path, data: dict[str, Path]
) -> None:
    config = _config(tiny_sd, data, steps=4, random_flip=True, caption_dropout=0.3)
    straight_reports: list[TrainProgress] = []
    straight = train(config, tmp_path / "straight", on_progress=straight_reports.append)
    assert straight.completed

    done: list[float] = []

    def note(p: TrainProgress) -> None:
        if p.phase == "training" and p.loss is not None:
            done.append(p.loss)

    stopped = train(
        config, tmp_path / "resumed", on_progress=note, should_stop=lambda: len(done) >= 2
    )
    assert not stopped.completed and stopped.steps == 2
    resumed = train(config, tmp_path / "resumed", on_progress=note)
    assert resumed.completed and resumed.resumed_from == 2
    assert done == _losses(straight_reports)
    assert straight.final_dir is not None and resumed.final_dir is not None
    unet = "unet/diffusion_pytorch_model.safetensors"
    a = load_file(str(straight.final_dir / unet))
    b = load_file(str(resumed.final_dir / unet))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_caption_dropout_and_shuffle_reach_the_batches(
    tmp_path: Path, tiny_sd: Path, data: dict[str, Path]
) -> None:
    config = _config(
        tiny_sd,
        data,
        buckets=False,
        prior_preservation=False,
        caption_dropout=0.25,
        shuffle_tags=True,
        keep_tokens=1,
    )
    batches = _batches(config)
    batches.cache_text()
    assert set(batches.text_cache) == {CAPTION, ""}  # "" encoded up front with dropout
    captions = [ex.caption for m in range(40) for _, ex, _ in batches.draws(m)[0]]
    assert "" in captions
    kept = [c for c in captions if c]
    assert all(c.startswith("sks dog, ") for c in kept)  # the trigger stays first
    assert all(sorted(c.split(", ")) == sorted(CAPTION.split(", ")) for c in kept)
    assert len(set(kept)) > 1  # shuffled per draw
    assert captions == [ex.caption for m in range(40) for _, ex, _ in batches.draws(m)[0]]
    # Frozen text encoders: a new variant is encoded on demand, exactly as up front.
    variant = next(c for c in kept if c != CAPTION)
    hidden, _ = batches.conditioning([variant, "", CAPTION], train_text=False)
    assert hidden.shape[0] == 3 and variant in batches.text_cache
    with torch.no_grad():
        direct, _ = batches.model.encode_text([variant])
    assert torch.equal(hidden[:1], direct)
    assert not torch.equal(hidden[:1], hidden[2:])

    # And a run with them trains to the end.
    result = train(config, tmp_path / "run")
    assert result.completed and result.final_dir is not None
