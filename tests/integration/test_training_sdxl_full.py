"""Full SDXL DreamBooth (lora_rank 0), Adafactor and fused backward on the tiny SDXL pipeline.

A real full fine-tune needs a CUDA GPU with 22.5 GiB; here ``force`` lets the tiny random
pipeline (32 px) train on the CPU through the real loop. Checked: the UNet is trained and
the text encoders stay as they were; a stopped and resumed run ends bit for bit like an
unbroken one; fused backward applies the same update as a plain step while never holding
more than one parameter's gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vitdex.errors import ConfigError
from vitdex.training.bases import load_base
from vitdex.training.config import plan_stages
from vitdex.training.dreambooth import TrainConfig, TrainProgress, train
from vitdex.training.dreambooth.model import Model, resolve_config
from vitdex.training.dreambooth.optim import Optimization

WEIGHTS = {
    "unet": "unet/diffusion_pytorch_model.safetensors",
    "text_encoder": "text_encoder/model.safetensors",
    "text_encoder_2": "text_encoder_2/model.safetensors",
}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: the tiny models gain nothing from more on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sdxl-full") / "instance"
    folder.mkdir()
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 256, (48, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return folder


@pytest.fixture(scope="module")
def sdxl(tiny_sd_factory: Callable[[str], Path]) -> Path:
    return tiny_sd_factory("sdxl")


def _config(base: Path, instances: Path, **changes: Any) -> TrainConfig:
    settings: dict[str, Any] = {
        "base_model": str(base),
        "instance_dir": str(instances),
        "instance_prompt": "a photo of sks dog",
        "resolution": 32,
        "force": True,  # 32 px, and a full SDXL fine-tune on a CPU
        "lora_rank": 0,
        "steps": 3,
        "text_encoder_steps": 2,  # a full SDXL run sets it to 0: the encoders stay frozen
        "learning_rate": 1e-3,
        "mixed_precision": "no",
        "device": "cpu",
        "save_every": 0,
        "seed": 11,
    }
    settings.update(changes)
    return TrainConfig(**settings)


def _weights(folder: Path, component: str) -> dict[str, torch.Tensor]:
    return load_file(str(folder / WEIGHTS[component]))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_full_sdxl_refused_on_a_cpu_without_force(
    tmp_path: Path, sdxl: Path, instances: Path
) -> None:
    config = _config(sdxl, instances, force=False, resolution=1024)
    with pytest.raises(ConfigError) as refused:
        train(config, tmp_path / "run")
    message = refused.value.message
    assert "22.5 GiB" in message and "CPU" in message and "force" in message
    assert "lora_rank" in message
    assert not (tmp_path / "run" / "final").exists()
    # fp16 loss scaling needs every gradient before any step: refused with fused backward.
    fp16 = _config(sdxl, instances, fused_backward=True, mixed_precision="fp16")
    with pytest.raises(ConfigError, match="fused_backward cannot use fp16"):
        train(fp16, tmp_path / "fp16")


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({}, id="adafactor"),
        pytest.param({"fused_backward": True}, id="adafactor-fused"),
        pytest.param({"optimizer": "adamw8bit", "fused_backward": True}, id="adamw-fused"),
    ],
)
def test_full_sdxl_trains_the_unet_and_keeps_the_text_encoders(
    tmp_path: Path, sdxl: Path, instances: Path, changes: dict[str, Any]
) -> None:
    result = train(_config(sdxl, instances, **changes), tmp_path / "run")
    cfg = result.config
    assert result.completed and result.steps == 3
    assert cfg.lora_rank == 0 and cfg.text_encoder_steps == 0 and cfg.gradient_checkpointing
    if "optimizer" in changes:
        # No bitsandbytes/CUDA here: torch AdamW, and the result says so.
        assert cfg.optimizer == "adamw8bit" and result.optimizer == "AdamW"
        assert any("8-bit Adam" in note for note in result.notes)
    else:
        assert cfg.optimizer == "adafactor" and result.optimizer == "Adafactor"
    assert result.lora_file is None and result.final_dir is not None
    unet, base_unet = _weights(result.final_dir, "unet"), _weights(sdxl, "unet")
    assert unet.keys() == base_unet.keys()
    changed = [k for k in unet if not torch.equal(unet[k], base_unet[k])]
    # Every weight gets a gradient from a step (a full fine-tune, not adapters).
    assert len(changed) >= 0.9 * len(unet)
    assert {t.dtype for t in unet.values()} == {torch.float32}
    for name in ("text_encoder", "text_encoder_2"):
        assert _same(_weights(result.final_dir, name), _weights(sdxl, name)), name


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"lr_scheduler": "cosine"}, id="adafactor"),
        pytest.param(
            {"fused_backward": True, "lr_scheduler": "linear", "lr_warmup_steps": 1},
            id="adafactor-fused",
        ),
        pytest.param({"fused_backward": True, "optimizer": "adamw8bit"}, id="adamw-fused"),
    ],
)
def test_stop_and_resume_is_exact(
    tmp_path: Path, sdxl: Path, instances: Path, changes: dict[str, Any]
) -> None:
    config = _config(sdxl, instances, steps=4, **changes)
    straight = train(config, tmp_path / "straight")
    done: list[int] = []

    def note(progress: TrainProgress) -> None:
        if progress.phase == "training" and progress.step > 0:
            done.append(progress.step)

    stopped = train(
        config, tmp_path / "resumed", on_progress=note, should_stop=lambda: len(done) >= 2
    )
    assert not stopped.completed and stopped.steps == 2
    resumed = train(config, tmp_path / "resumed")
    assert resumed.completed and resumed.resumed_from == 2
    assert resumed.final_loss == straight.final_loss
    assert straight.final_dir is not None and resumed.final_dir is not None
    assert _same(_weights(straight.final_dir, "unet"), _weights(resumed.final_dir, "unet"))


def test_fused_backward_equals_a_plain_step(tmp_path: Path, sdxl: Path, instances: Path) -> None:
    """Without clipping, stepping each parameter during backward is the same AdamW update
    as one step after it, at every point of the schedule."""
    common: dict[str, Any] = {
        "optimizer": "adamw8bit",  # torch AdamW here; full SDXL turns plain adamw into Adafactor
        "max_grad_norm": 0.0,
        "lr_scheduler": "linear",
        "lr_warmup_steps": 1,
    }
    plain = train(_config(sdxl, instances, **common), tmp_path / "plain")
    fused = train(_config(sdxl, instances, fused_backward=True, **common), tmp_path / "fused")
    assert plain.final_dir is not None and fused.final_dir is not None
    a, b = _weights(plain.final_dir, "unet"), _weights(fused.final_dir, "unet")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert not _same(a, _weights(sdxl, "unet"))


@pytest.mark.parametrize("fused", [True, False])
def test_fused_backward_holds_one_gradient_at_a_time(
    sdxl: Path, instances: Path, fused: bool
) -> None:
    config = _config(sdxl, instances, fused_backward=fused, optimizer="adafactor")
    base = load_base(config.base_model, force=True)
    device = torch.device("cpu")
    resolved = resolve_config(config, base, device)
    model = Model(resolved, base, device)
    model.prepare(train_unet=True, train_text=False)
    stage = plan_stages(resolved)[0]
    model.set_stage(stage)
    params = model.parameters(["unet"])
    live: list[int] = []

    def count(_: torch.Tensor) -> None:
        live.append(sum(p.grad is not None for p in params))

    # Registered first, so it runs before the optimizer's hook of the same parameter.
    handles = [p.register_post_accumulate_grad_hook(count) for p in params]
    optim = Optimization(resolved, device, [stage], [])
    optim.start(stage, model)
    before = [p.detach().clone() for p in params]
    factor = 2 ** (len(base.pipeline.vae.config.block_out_channels) - 1)
    side = int(resolved.resolution or 0) // factor
    channels = int(base.pipeline.unet.config.in_channels)
    generator = torch.Generator("cpu").manual_seed(0)
    mean = torch.randn((1, channels, side, side), generator=generator)
    with torch.no_grad():
        conditioning = model.encode_text(["a photo of sks dog"])
    loss = model.loss(mean, torch.zeros_like(mean), conditioning, generator, 1)
    optim.backward(loss)
    for handle in handles:
        handle.remove()
    assert len(live) == len(params)
    if fused:
        assert max(live) == 1  # only the gradient being applied exists
        assert all(p.grad is None for p in params)
        assert sum(not torch.equal(p, q) for p, q in zip(params, before, strict=True)) > 0
        optim.step()  # the schedule only: nothing left to apply
    else:
        assert max(live) == len(params)
        assert all(torch.equal(p, q) for p, q in zip(params, before, strict=True))
        optim.step()
    assert all(p.grad is None for p in params)
    assert sum(not torch.equal(p, q) for p, q in zip(params, before, strict=True)) > 0
