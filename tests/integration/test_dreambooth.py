"""DreamBooth training on tiny random Stable Diffusion pipelines (32 px, a few steps).

Every run trains the real diffusers models through the real loop; the tiny pipelines make a
step take a few hundredths of a second on a CPU. Resumption is checked for exactness: a run
stopped (or killed with SIGKILL) and resumed ends with the same weights, bit for bit, as one
that never stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vitdex.errors import ConfigError
from vitdex.training.dreambooth import (
    TrainConfig,
    TrainProgress,
    fuse_lora,
    latest_checkpoint,
    list_checkpoints,
    train,
)

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = {
    "unet": "unet/diffusion_pytorch_model.safetensors",
    "text_encoder": "text_encoder/model.safetensors",
    "text_encoder_2": "text_encoder_2/model.safetensors",
}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: the tiny models gain nothing from more, and on a shared two-core
    machine OpenMP's spinning barriers stall a step for seconds when the other core is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Instance and class folders: photo-like noise images, some with caption sidecars."""
    root = tmp_path_factory.mktemp("dreambooth-data")
    folders = {}
    for name, count, offset in (("instance", 3, 0), ("class", 3, 100)):
        folder = root / name
        folder.mkdir()
        for i in range(count):
            rng = np.random.default_rng(offset + i)
            # One is not square: resized and centre-cropped like the rest.
            shape = (40, 48, 3) if i == 1 else (48, 48, 3)
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:04d}.png")
        (folder / "0000.txt").write_text(
            "a photo of sks dog" if name == "instance" else "a photo of a dog"
        )
        folders[name] = folder
    return folders


def _config(base: Path, data: dict[str, Path], **changes: Any) -> TrainConfig:
    settings: dict[str, Any] = {
        "base_model": str(base),
        "instance_dir": str(data["instance"]),
        "instance_prompt": "a photo of sks dog",
        "class_prompt": "a photo of a dog",
        "resolution": 32,
        "force": True,  # 32 px is far below any real version's native resolution
        "steps": 2,
        "text_encoder_steps": 2,
        "learning_rate": 1e-3,
        "text_encoder_learning_rate": 1e-3,
        "mixed_precision": "no",
        "device": "cpu",
        "save_every": 0,
        "seed": 7,
    }
    settings.update(changes)
    return TrainConfig(**settings)


def _weights(folder: Path, component: str) -> dict[str, torch.Tensor]:
    return load_file(str(folder / WEIGHTS[component]))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in a if not torch.equal(a[k], b[k])}


class Recorder:
    """Collects progress reports."""

    def __init__(self) -> None:
        self.reports: list[TrainProgress] = []

    def __call__(self, progress: TrainProgress) -> None:
        self.reports.append(progress)

    def stages(self) -> list[str | None]:
        return [r.stage for r in self.reports if r.phase == "training" and r.step > 0]


# --------------------------------------------------------------------------- config


def test_registry_limits_apply(
    tmp_path: Path, tiny_sd_factory: Callable[[str], Path], data: dict[str, Path]
) -> None:
    sdxl = tiny_sd_factory("sdxl")
    with pytest.raises(ConfigError, match=r"does not fit|too small"):
        train(_config(sdxl, data, force=False), tmp_path / "a")
    with pytest.raises(ConfigError, match="LoRA only"):
        train(_config(sdxl, data, force=False, resolution=1024, lora_rank=0), tmp_path / "b")


# --------------------------------------------------------------------------- training


def test_two_stage_with_prior_preservation(
    tmp_path: Path, tiny_sd: Path, data: dict[str, Path]
) -> None:
    """Text encoder first (UNet untouched), then the UNet (text encoder frozen)."""
    progress = Recorder()
    config = _config(
        tiny_sd,
        data,
        class_dir=str(data["class"]),
        prior_preservation=True,
        prior_loss_weight=0.5,
        save_every=2,
        keep_checkpoints=5,
        use_8bit_adam=True,  # no bitsandbytes/CUDA here: recorded, AdamW used
    )
    result = train(config, tmp_path / "run", on_progress=progress)
    assert result.completed and result.steps == 4
    assert result.final_dir == tmp_path / "run" / "final"
    assert result.final_loss is not None and np.isfinite(result.final_loss)
    assert result.config.version == "sd15" and result.config.lora_rank == 0
    assert result.optimizer == "AdamW"
    assert any("8-bit Adam" in note for note in result.notes)
    assert progress.stages() == ["text_encoder", "text_encoder", "unet", "unet"]
    assert [r.phase for r in progress.reports][:2] == ["loading", "caching"]
    assert progress.reports[-1].phase == "done"
    steps = [r for r in progress.reports if r.phase == "training" and r.step > 0]
    assert all(r.it_per_s and r.it_per_s > 0 and r.loss is not None for r in steps)

    final = result.final_dir
    assert final is not None
    base_unet, base_te = _weights(tiny_sd, "unet"), _weights(tiny_sd, "text_encoder")
    unet, te = _weights(final, "unet"), _weights(final, "text_encoder")
    assert len(_changed(unet, base_unet)) == len(unet)
    assert _changed(te, base_te)
    # After stage 1 only the text encoder has moved; stage 2 leaves it as it was.
    stage1 = list_checkpoints(tmp_path / "run")[0][1]
    assert stage1.name == "step-00000002"
    assert sorted(p.name for p in stage1.glob("*.safetensors")) == ["text_encoder.safetensors"]
    assert _same(load_file(str(stage1 / "text_encoder.safetensors")), te)
    saved = json.loads((stage1 / "config.json").read_text())
    assert saved == result.config.to_dict()

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(final, safety_checker=None)
    image = pipe(
        "a photo of sks dog",
        height=32,
        width=32,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert image.shape == (32, 32, 3) and np.isfinite(image).all()


def test_joint_v_prediction_with_accumulation(
    tmp_path: Path, tiny_sd_factory: Callable[[str], Path], data: dict[str, Path]
) -> None:
    """SD 2.1 (v-prediction): UNet and text encoder together, then the UNet alone."""
    base = tiny_sd_factory("sd21")
    progress = Recorder()
    config = _config(
        base,
        data,
        mode="joint",
        steps=3,
        text_encoder_steps=2,
        batch_size=2,
        gradient_accumulation_steps=2,
        lr_scheduler="cosine",
        lr_warmup_steps=1,
        random_flip=True,
        save_every=2,
    )
    result = train(config, tmp_path / "run", on_progress=progress)
    assert result.config.version == "sd21"
    assert progress.stages() == ["joint", "joint", "unet"]
    lrs = [r.lr or 0.0 for r in progress.reports if r.phase == "training" and r.step > 0]
    assert lrs[0] == pytest.approx(1e-3)  # the end of the 1-step warm-up, then cosine decay
    assert lrs[0] > lrs[1] > lrs[2]
    final = result.final_dir
    assert final is not None
    at2 = latest_checkpoint(tmp_path / "run")
    assert at2 is not None and at2.name == "step-00000002"
    te = _weights(final, "text_encoder")
    assert _changed(te, _weights(base, "text_encoder"))
    assert _same(load_file(str(at2 / "text_encoder.safetensors")), te)  # frozen after step 2
    assert _changed(_weights(final, "unet"), load_file(str(at2 / "unet.safetensors")))


def test_latent_caching_matches_fresh_encoding(
    tmp_path: Path, tiny_sd: Path, data: dict[str, Path]
) -> None:
    """Cached latents are the VAE's distribution, sampled with the same noise: same run."""
    losses: dict[bool, list[float]] = {}
    finals: dict[bool, Path] = {}
    for cache in (True, False):
        progress = Recorder()
        config = _config(tiny_sd, data, steps=3, text_encoder_steps=0, cache_latents=cache)
        result = train(config, tmp_path / f"cache-{cache}", on_progress=progress)
        losses[cache] = [
            r.loss for r in progress.reports if r.phase == "training" and r.loss is not None
        ]
        assert result.final_dir is not None
        finals[cache] = result.final_dir
        phases = {r.phase for r in progress.reports}
        assert ("caching" in phases) is cache
    # Batched vs single VAE encodes differ in the last bits only: the losses agree closely,
    # and so do the weights (Adam can round a near-zero gradient either way, so single
    # elements may differ by up to a step, ~lr; the run as a whole must not).
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)
    cached, fresh = _weights(finals[True], "unet"), _weights(finals[False], "unet")
    base = _weights(tiny_sd, "unet")
    moved = sum(float((cached[k] - base[k]).norm() ** 2) for k in base) ** 0.5
    apart = sum(float((cached[k] - fresh[k]).norm() ** 2) for k in base) ** 0.5
    assert moved > 0 and apart / moved < 1e-2


def test_bf16_gradient_checkpointing(tmp_path: Path, tiny_sd: Path, data: dict[str, Path]) -> None:
    """bf16 autocast and checkpointing train; trained weights stay (and are saved) fp32."""
    config = _config(tiny_sd, data, mixed_precision="bf16", gradient_checkpointing=True, sdpa=False)
    result = train(config, tmp_path / "run")
    assert result.final_loss is not None and np.isfinite(result.final_loss)
    assert result.final_dir is not None
    unet = _weights(result.final_dir, "unet")
    assert {t.dtype for t in unet.values()} == {torch.float32}
    assert _changed(unet, _weights(tiny_sd, "unet"))


def test_sdxl_lora(
    tmp_path: Path, tiny_sd_factory: Callable[[str], Path], data: dict[str, Path]
) -> None:
    """SDXL trains LoRA adapters; final/ is the full pipeline with them merged in."""
    base = tiny_sd_factory("sdxl")
    config = _config(base, data, lora_rank=4, steps=2, text_encoder_steps=1)
    result = train(config, tmp_path / "run")
    assert result.config.version == "sdxl" and result.config.lora_rank == 4
    assert result.lora_file is not None and result.lora_file.is_file()
    lora = load_file(str(result.lora_file))
    assert any(k.startswith("unet.") for k in lora)
    assert any(k.startswith("text_encoder.") for k in lora)
    assert any(k.startswith("text_encoder_2.") for k in lora)
    final = result.final_dir
    assert final is not None
    unet, base_unet = _weights(final, "unet"), _weights(base, "unet")
    assert unet.keys() == base_unet.keys()  # no LoRA layers left in the pipeline
    changed = _changed(unet, base_unet)
    assert changed
    assert all(k.split(".")[-2] in {"to_q", "to_k", "to_v", "0"} for k in changed)
    assert _changed(_weights(final, "text_encoder_2"), _weights(base, "text_encoder_2"))

    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(final)
    image = pipe(
        "a photo of sks dog",
        height=32,
        width=32,
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert np.isfinite(image).all()


def test_lora_file_loads_in_diffusers(
    tmp_path: Path, tiny_sd_factory: Callable[[str], Path], data: dict[str, Path]
) -> None:
    """diffusers' own LoRA loader reads the file and fuses it to the same UNet as final/."""
    from diffusers import StableDiffusionXLPipeline

    base = tiny_sd_factory("sdxl")
    config = _config(base, data, lora_rank=4, lora_alpha=8, steps=2, text_encoder_steps=0)
    result = train(config, tmp_path / "run")
    assert result.lora_file is not None and result.final_dir is not None
    pipe = StableDiffusionXLPipeline.from_pretrained(base)
    pipe.load_lora_weights(str(result.lora_file.parent))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    final = _weights(result.final_dir, "unet")
    fused = pipe.unet.state_dict()
    for key, value in final.items():
        torch.testing.assert_close(fused[key], value, rtol=0, atol=1e-6)
    assert _changed(final, _weights(base, "unet"))


def test_fuse_lora_adds_scaled_product() -> None:
    linear = torch.nn.Linear(4, 3, bias=False)
    model = torch.nn.ModuleDict({"proj": linear})
    before = linear.weight.detach().clone()
    a, b = torch.randn(2, 4), torch.randn(3, 2)
    fuse_lora(model, {"proj.lora_A.default.weight": a, "proj.lora_B.default.weight": b}, 0.5)
    torch.testing.assert_close(linear.weight.detach(), before + 0.5 * b @ a)


def test_generates_missing_class_images(
    tmp_path: Path, tiny_sd: Path, data: dict[str, Path]
) -> None:
    class_dir = tmp_path / "class"
    progress = Recorder()
    config = _config(
        tiny_sd,
        data,
        class_dir=str(class_dir),
        prior_preservation=True,
        num_class_images=2,
        class_generation_steps=2,
        steps=1,
        text_encoder_steps=0,
    )
    result = train(config, tmp_path / "run", on_progress=progress)
    assert result.completed
    assert sorted(p.name for p in class_dir.iterdir()) == [
        "0000.png",
        "0000.txt",
        "0001.png",
        "0001.txt",
    ]
    assert Image.open(class_dir / "0000.png").size == (32, 32)
    assert (class_dir / "0001.txt").read_text().strip() == "a photo of a dog"
    assert sum(r.phase == "generating" for r in progress.reports) == 2


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    ("version", "changes"),
    [
        pytest.param(
            "sd21",
            {
                "mode": "joint",
                "steps": 5,
                "text_encoder_steps": 2,
                "mixed_precision": "bf16",
                "gradient_checkpointing": True,
                "cache_latents": False,
                "random_flip": True,
                "center_crop": False,
                "gradient_accumulation_steps": 2,
                "lr_scheduler": "linear",
                "lr_warmup_steps": 2,
            },
            id="sd21-joint-bf16",
        ),
        pytest.param(
            "sdxl",
            {"lora_rank": 4, "steps": 3, "text_encoder_steps": 2, "lr_scheduler": "cosine"},
            id="sdxl-lora-two-stage",
        ),
    ],
)
def test_stop_and_resume_is_exact(
    tmp_path: Path,
    tiny_sd_factory: Callable[[str], Path],
    data: dict[str, Path],
    version: str,
    changes: dict[str, Any],
) -> None:
    """Stopped in the middle (cancel), resumed: the same final weights as a straight run."""
    base = tiny_sd_factory(version)
    config = _config(base, data, class_dir=str(data["class"]), prior_preservation=True, **changes)
    straight = train(config, tmp_path / "straight")

    done: list[int] = []
    progress = Recorder()

    def note(p: TrainProgress) -> None:
        progress(p)
        if p.phase == "training" and p.step > 0:
            done.append(p.step)

    stopped = train(
        config, tmp_path / "resumed", on_progress=note, should_stop=lambda: len(done) >= 3
    )
    assert not stopped.completed and stopped.final_dir is None
    assert stopped.steps == 3
    assert stopped.checkpoint_dir == tmp_path / "resumed" / "checkpoints" / "step-00000003"
    assert progress.reports[-1].phase == "stopped"
    assert not (tmp_path / "resumed" / "final").exists()

    # save_every may change between the two halves; it does not alter the weights.
    resumed = train(TrainConfig(**{**config.to_dict(), "save_every": 1}), tmp_path / "resumed")
    assert resumed.completed and resumed.resumed_from == 3
    assert resumed.final_loss == straight.final_loss
    assert straight.final_dir is not None and resumed.final_dir is not None
    components = ["unet", "text_encoder"] + (["text_encoder_2"] if version == "sdxl" else [])
    for component in components:
        a = _weights(straight.final_dir, component)
        b = _weights(resumed.final_dir, component)
        assert _same(a, b), component


def test_resume_refuses_other_settings_and_finished_runs_return(
    tmp_path: Path, tiny_sd: Path, data: dict[str, Path]
) -> None:
    config = _config(tiny_sd, data, steps=2, text_encoder_steps=1)
    before_any = train(config, tmp_path / "run", should_stop=lambda: True)
    assert before_any.steps == 0 and before_any.checkpoint_dir is None
    assert not list_checkpoints(tmp_path / "run")
    progress = Recorder()
    stopped = train(
        config, tmp_path / "run", on_progress=progress, should_stop=lambda: bool(progress.stages())
    )
    assert stopped.steps == 1
    other = TrainConfig(**{**config.to_dict(), "learning_rate": 5e-4})
    with pytest.raises(ConfigError, match="learning_rate"):
        train(other, tmp_path / "run")
    # Leftovers of a save killed halfway, and a folder that is not a checkpoint, are ignored.
    (tmp_path / "run" / "checkpoints" / ".tmp-step-00000002-999").mkdir()
    (tmp_path / "run" / "checkpoints" / "step-00000009").mkdir()
    assert latest_checkpoint(tmp_path / "run") == (
        tmp_path / "run" / "checkpoints" / "step-00000001"
    )
    result = train(config, tmp_path / "run")
    assert result.completed and result.resumed_from == 1
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))
    # The finished run answers from its record, without training again.
    started = time.perf_counter()
    again = train(config, tmp_path / "run")
    assert time.perf_counter() - started < 1.0
    assert again.final_dir == result.final_dir and again.steps == 3
    assert again.final_loss == result.final_loss
    with pytest.raises(ConfigError, match="finished run with other settings"):
        train(other, tmp_path / "run")


@pytest.mark.slow
def test_sigkill_and_resume_matches_uninterrupted_run(
    tmp_path: Path, tiny_sd: Path, data: dict[str, Path]
) -> None:
    """kill -9 after a checkpoint; the next run resumes and ends with identical weights."""
    config = _config(
        tiny_sd,
        data,
        class_dir=str(data["class"]),
        prior_preservation=True,
        steps=28,
        text_encoder_steps=2,
        save_every=3,
        random_flip=True,
    )
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config.to_dict()))
    out = tmp_path / "killed"
    # The same thread count as this process: reductions split differently otherwise.
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "vitdex.training.dreambooth", str(config_file), str(out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    killed_after = None
    try:
        assert child.stdout is not None
        for line in child.stdout:
            report = json.loads(line)
            # Kill once a second-stage checkpoint (step 6) exists, with 24 steps to go.
            if report.get("phase") == "checkpoint" and report["step"] >= 6:
                os.kill(child.pid, signal.SIGKILL)
                killed_after = report["step"]
                break
    finally:
        child.kill()
        child.wait(timeout=60)
    assert killed_after is not None, "the child finished or failed before a checkpoint"
    assert child.returncode == -signal.SIGKILL
    assert not (out / "final").exists()
    newest = latest_checkpoint(out)
    assert newest is not None

    resumed = train(config, out)
    assert resumed.completed
    assert resumed.resumed_from is not None and killed_after <= resumed.resumed_from < 30
    straight = train(config, tmp_path / "straight")
    assert straight.final_dir is not None and resumed.final_dir is not None
    for component in ("unet", "text_encoder"):
        assert _same(
            _weights(straight.final_dir, component), _weights(resumed.final_dir, component)
        ), component
