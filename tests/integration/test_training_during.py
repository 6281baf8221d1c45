"""During a DreamBooth run: sample images, the validation loss, EMA weights, peak memory.

Tiny random pipelines at 32 px train for real through the loop. What training does on the
side must be as reproducible as training itself: a stopped-and-resumed run renders the
same pixels and measures the same losses at the same steps as one that never stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vitdex.errors import ConfigError
from vitdex.training.dreambooth import TrainConfig, TrainProgress, list_checkpoints, train
from vitdex.training.dreambooth.ema import ema_decay
from vitdex.training.dreambooth.validation import hold_out
from vitdex.training.losses import read_samples, read_validation

UNET = "unet/diffusion_pytorch_model.safetensors"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: reductions split the same way in every run of a test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four noise images, one with its own caption."""
    folder = tmp_path_factory.mktemp("during") / "instance"
    folder.mkdir()
    for i in range(4):
        pixels = np.random.default_rng(i).integers(0, 256, (48, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    (folder / "0001.txt").write_text("a photo of sks dog on grass")
    return folder


def _config(base: Path, instances: Path, **changes: Any) -> TrainConfig:
    settings: dict[str, Any] = {
        "base_model": str(base),
        "instance_dir": str(instances),
        "instance_prompt": "a photo of sks dog",
        "resolution": 32,
        "force": True,
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


def _pixels(out: Path) -> dict[tuple[int, int], np.ndarray]:
    return {
        (s["step"], s["index"]): np.asarray(Image.open(out / s["file"])) for s in read_samples(out)
    }


def test_hold_out_is_evenly_spaced_and_refuses_to_leave_nothing(instances: Path) -> None:
    from vitdex.training.data import load_examples

    examples = load_examples(instances, "p")
    kept, held = hold_out(examples, 1)
    assert [e.image.name for e in held] == ["0002.png"]
    assert [e.image.name for e in kept] == ["0000.png", "0001.png", "0003.png"]
    kept, held = hold_out(examples, 2)
    assert [e.image.name for e in held] == ["0001.png", "0003.png"]
    assert hold_out(examples, 0) == (examples, [])
    with pytest.raises(ConfigError, match="no training image"):
        hold_out(examples, 4)


def test_too_many_validation_images_is_a_config_error(
    tmp_path: Path, tiny_sd: Path, instances: Path
) -> None:
    with pytest.raises(ConfigError, match="validation_images=4 would leave no training image"):
        train(_config(tiny_sd, instances, validation_images=4), tmp_path / "run")


@pytest.mark.parametrize(
    ("version", "changes"),
    [
        pytest.param("sd15", {}, id="sd15-full"),
        pytest.param(
            "sdxl",
            {"lora_rank": 4, "mixed_precision": "bf16", "steps": 3, "text_encoder_steps": 1},
            id="sdxl-lora-bf16",
        ),
    ],
)
def test_samples_validation_and_ema_resume_exactly(
    tmp_path: Path,
    tiny_sd_factory: Callable[[str], Path],
    instances: Path,
    version: str,
    changes: dict[str, Any],
) -> None:
    """Stopped after step 3 and resumed: the same samples, losses and weights as a straight run."""
    base = tiny_sd_factory(version)
    config = _config(
        base,
        instances,
        sample_every=2,
        sample_steps=2,
        sample_prompts=["a photo of sks dog", "sks dog on a beach"],
        validation_images=1,
        validation_every=2,
        ema=True,
        ema_decay=0.6,
        **changes,
    )
    reports: list[TrainProgress] = []
    straight = train(config, tmp_path / "straight", on_progress=reports.append)
    assert straight.completed and straight.steps == 4
    assert any("EMA" in note for note in straight.notes)
    assert straight.peak_memory_bytes is None  # a CPU run
    phases = [r.phase for r in reports]
    assert "sampling" in phases and "validating" in phases
    assert any("validation loss" in r.message for r in reports if r.phase == "validating")

    out = tmp_path / "straight"
    samples = read_samples(out)
    assert [(s["step"], s["index"], s["seed"]) for s in samples] == [
        (2, 0, 1234),
        (2, 1, 1235),
        (4, 0, 1234),
        (4, 1, 1235),
    ]
    assert samples[1]["prompt"] == "sks dog on a beach"
    assert samples[0]["file"] == "samples/step-00000002/00.png"
    first = _pixels(out)
    assert all(p.shape == (32, 32, 3) for p in first.values())
    # The weights moved between the two sampled steps, and the samples show it.
    assert not np.array_equal(first[(2, 0)], first[(4, 0)])
    losses = read_validation(out)
    assert [s for s, _ in losses] == [0, 2, 4]
    assert all(np.isfinite(v) and v > 0 for _, v in losses)
    assert len({v for _, v in losses}) == 3

    done: list[int] = []

    def count(p: TrainProgress) -> None:
        if p.phase == "training" and p.step > 0:
            done.append(p.step)

    resumed_dir = tmp_path / "resumed"
    stopped = train(config, resumed_dir, on_progress=count, should_stop=lambda: len(done) >= 3)
    assert not stopped.completed and stopped.steps == 3
    checkpoint = stopped.checkpoint_dir
    assert checkpoint is not None
    state = torch.load(checkpoint / "state.pt", weights_only=True)
    trained = ["unet", "text_encoder"] + (["text_encoder_2"] if version == "sdxl" else [])
    assert sorted(state["ema"]) == sorted(trained)
    for module in trained:
        shadow = load_file(str(checkpoint / f"ema-{module}.safetensors"))
        assert {t.dtype for t in shadow.values()} == {torch.float32}
    # Sample settings may change on resume; these stay the same here.
    resumed = train(TrainConfig(**{**config.to_dict(), "save_every": 1}), resumed_dir)
    assert resumed.completed and resumed.resumed_from == 3
    second = _pixels(resumed_dir)
    assert first.keys() == second.keys()
    for key in first:
        assert np.array_equal(first[key], second[key]), key
    assert read_validation(resumed_dir) == losses
    assert straight.final_dir is not None and resumed.final_dir is not None
    a, b = load_file(str(straight.final_dir / UNET)), load_file(str(resumed.final_dir / UNET))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_validation_is_the_same_measure_for_every_run(
    tmp_path: Path, tiny_sd: Path, instances: Path
) -> None:
    """Step 0 measures the base, whatever the seed; samples and validation leave training be."""
    common = {"steps": 2, "text_encoder_steps": 0, "validation_images": 1}
    a = train(_config(tiny_sd, instances, **common, seed=1), tmp_path / "a")
    b = train(_config(tiny_sd, instances, **common, seed=2, learning_rate=5e-4), tmp_path / "b")
    # The same as "a", with sampling and more validation on the side.
    c = train(
        _config(
            tiny_sd, instances, **common, seed=1, sample_every=1, sample_steps=2, validation_every=1
        ),
        tmp_path / "c",
    )
    va, vb, vc = (read_validation(tmp_path / n) for n in "abc")
    assert [s for s, _ in va] == [0, 2] and [s for s, _ in vc] == [0, 1, 2]
    assert va[0] == vb[0] == vc[0]
    assert va[1][1] != vb[1][1] and va[1][1] != va[0][1]
    assert va[1] == vc[2]
    assert a.final_loss == c.final_loss
    assert a.final_dir is not None and c.final_dir is not None
    ua, uc = load_file(str(a.final_dir / UNET)), load_file(str(c.final_dir / UNET))
    assert all(torch.equal(ua[k], uc[k]) for k in ua)
    assert [(s["step"], s["index"]) for s in read_samples(tmp_path / "c")] == [(1, 0), (2, 0)]
    assert b.completed


def test_ema_is_the_average_of_the_trained_weights(
    tmp_path: Path, tiny_sd: Path, instances: Path
) -> None:
    """Checkpoints hold the shadow; the output is the shadow after the last step."""
    common = {"steps": 3, "text_encoder_steps": 0, "save_every": 1, "keep_checkpoints": 5}
    plain = train(_config(tiny_sd, instances, **common), tmp_path / "plain")
    averaged = train(
        _config(tiny_sd, instances, **common, ema=True, ema_decay=0.5), tmp_path / "ema"
    )
    assert not any("EMA" in note for note in plain.notes)
    assert any("EMA" in note for note in averaged.notes)

    def weights(run: str) -> dict[int, dict[str, torch.Tensor]]:
        return {
            step: load_file(str(path / "unet.safetensors"))
            for step, path in list_checkpoints(tmp_path / run)
        }

    trained, with_ema = weights("plain"), weights("ema")
    assert sorted(trained) == [1, 2]
    # Averaging does not change what is trained.
    for step in trained:
        assert all(torch.equal(trained[step][k], with_ema[step][k]) for k in trained[step])
    shadows = {
        step: load_file(str(path / "ema-unet.safetensors"))
        for step, path in list_checkpoints(tmp_path / "ema")
    }
    # The first update copies the weights; the next ones move the shadow towards them.
    assert all(torch.equal(shadows[1][k], trained[1][k]) for k in shadows[1])
    assert plain.final_dir is not None and averaged.final_dir is not None
    last = load_file(str(plain.final_dir / UNET))
    final = load_file(str(averaged.final_dir / UNET))
    for k, shadow in shadows[2].items():
        expected = shadow.lerp(last[k], 1.0 - ema_decay(0.5, 3))
        assert torch.equal(final[k], expected), k
    step2 = {k: shadows[1][k].lerp(trained[2][k], 1.0 - ema_decay(0.5, 2)) for k in shadows[1]}
    assert all(torch.equal(shadows[2][k], step2[k]) for k in step2)
    assert any(not torch.equal(final[k], last[k]) for k in final)
    recorded = json.loads((tmp_path / "ema" / "result.json").read_text())
    assert recorded["peak_memory_bytes"] is None


def test_samples_and_validation_survive_kill_9(
    tmp_path: Path, tiny_sd: Path, instances: Path
) -> None:
    """kill -9 right after the step-2 checkpoint, then resume: the same sample pixels and
    validation losses at every step as a run that was never killed."""
    config = _config(
        tiny_sd,
        instances,
        steps=4,
        text_encoder_steps=0,
        save_every=2,
        sample_every=2,
        sample_steps=2,
        validation_images=1,
        validation_every=2,
        ema=True,
        ema_decay=0.6,
    )
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config.to_dict()))
    killed_dir = tmp_path / "killed"
    # One thread, like this test's process: reductions split the same way.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-m", "vitdex.training.dreambooth", str(config_file), str(killed_dir)],
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
            if report.get("phase") == "checkpoint" and report["step"] >= 2:
                os.kill(child.pid, signal.SIGKILL)
                killed_after = report["step"]
                break
    finally:
        child.kill()
        child.wait(timeout=60)
    assert killed_after == 2, "the child finished or failed before its first checkpoint"
    assert child.returncode == -signal.SIGKILL
    assert not (killed_dir / "final").exists()

    resumed = train(config, killed_dir)
    assert resumed.completed and resumed.resumed_from == 2
    straight = train(config, tmp_path / "straight")
    assert straight.completed
    want, got = _pixels(tmp_path / "straight"), _pixels(killed_dir)
    assert sorted(want) == sorted(got) == [(2, 0), (4, 0)]
    for key in want:
        assert np.array_equal(want[key], got[key]), key
    assert read_validation(killed_dir) == read_validation(tmp_path / "straight")
    assert [s for s, _ in read_validation(killed_dir)] == [0, 2, 4]
