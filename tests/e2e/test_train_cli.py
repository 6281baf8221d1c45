"""`vitdex train` end to end: photos → index → dataset → train → single file → registry.

Real processes for training (the CLI as users run it), the tiny ViT and a tiny SD
pipeline, 32 px, a handful of steps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from tests.helpers import as_json, run_vitdex
from tests.photos import make_photo

pytestmark = pytest.mark.slow


def vitdex(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    return run_vitdex(*args, code=code, timeout=600)


@pytest.fixture
def dataset(vitdex_env: dict[str, str], tmp_path: Path) -> str:
    lib = tmp_path / "Pictures"
    for i in range(8):
        make_photo(lib / f"dog{i:02d}.jpg", size=(96, 72), seed=i)
    assert as_json(vitdex("index", str(lib), "--json", "--no-progress"))["embedded"] == 8
    created = as_json(
        vitdex(
            "dataset", "create", "rex", "--seed", str(lib / "dog00.jpg"), "--k", "4",
            "--prompt", "a photo of sks dog", "--class-prompt", "a photo of a dog",
            "--class-count", "2", "--json",
        )
    )  # fmt: skip
    assert created["dataset_id"] == 1
    return "rex"


TRAIN = ("--resolution", "32", "--force", "--mixed-precision", "no", "--device", "cpu")


def test_train_convert_register(dataset: str, tiny_sd: Path) -> None:
    out = as_json(
        vitdex(
            "train", dataset, "--base", str(tiny_sd), "--steps", "3",
            "--text-encoder-steps", "2", "--save-every", "2", *TRAIN, "--json",
        )
    )  # fmt: skip
    assert out["run_id"] == 1 and out["state"] == "succeeded" and out["steps"] == 5
    ckpt = out["checkpoint"]
    tensors = load_file(ckpt["path"])
    assert any(k.startswith("model.diffusion_model.") for k in tensors)
    assert any(k.startswith("cond_stage_model.transformer.") for k in tensors)

    runs = as_json(vitdex("train", "list", "--json"))
    assert [(r["id"], r["state"], r["step"]) for r in runs] == [(1, "succeeded", 5)]
    assert runs[0]["config"]["prior_preservation"] is True
    assert "succeeded" in vitdex("train", "list").stdout
    shown = as_json(vitdex("checkpoints", "show", str(ckpt["id"]), "--json"))
    assert shown["sha256"] == ckpt["sha256"] and shown["run_id"] == 1
    assert shown["config"]["steps"] == 3 and shown["version"] == "sd15"
    refused = vitdex("train", "resume", "1", code=2)
    assert "already finished" in refused.stderr

    bad = vitdex("train", dataset, "--base", str(tiny_sd), "--resolution", "768", code=2)
    assert "768 px does not fit" in bad.stderr and "Traceback" not in bad.stderr
    missing = vitdex("train", "nope", "--base", str(tiny_sd), code=2)
    assert "no dataset" in missing.stderr


def test_steps_alone_scales_and_says_the_total(dataset: str, tiny_sd: Path) -> None:
    """`--steps 4` alone trains 4 + 2 steps (the default 350/800 ratio), not 4 + 350,
    and says so on stderr before training."""
    done = vitdex("train", dataset, "--base", str(tiny_sd), "--steps", "4", *TRAIN, "--json")
    assert as_json(done)["steps"] == 6
    assert "training: 4 UNet steps, 2 text-encoder steps, 6 steps in total" in done.stderr


def test_uncached_hub_base_offline_exits_3(vitdex_env: dict[str, str], tmp_path: Path) -> None:
    """Refused before any run is made, with the ways out, no traceback, exit code 3."""
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    refused = run_vitdex("train", "rex", "--base", "someone/uncached", env=env, code=3)
    assert "cannot load the Stable Diffusion base 'someone/uncached'" in refused.stderr
    assert "--base-config" in refused.stderr and "Traceback" not in refused.stderr


def test_sigkilled_run_resumes(
    dataset: str, tiny_sd: Path, tmp_path: Path, tiny_sd_factory: Callable[[str], Path]
) -> None:
    """kill -9 mid-run, `vitdex train resume`, same final weights as an unbroken run."""
    args = ("--base", str(tiny_sd), "--steps", "30", "--text-encoder-steps", "0",
            "--mode", "joint", "--save-every", "3", "--seed", "7", *TRAIN, "--json")  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitdex", "train", dataset, *args],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    home = Path(os.environ["VITDEX_HOME"])
    checkpoints = home / "training" / "run-1" / "checkpoints"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("step-*")):
        assert proc.poll() is None, "training ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Killed a few steps in: a checkpoint exists, the result does not.
    assert not (home / "training" / "run-1" / "final").exists()

    # Its process is gone: listing the runs recovers it, queued again to resume.
    listed = as_json(vitdex("train", "list", "--json"))
    assert (listed[0]["state"], listed[0]["job_state"]) == ("queued", "queued"), listed[0]
    resumed = as_json(vitdex("train", "resume", "1", "--json"))
    assert resumed["state"] == "succeeded" and resumed["steps"] == 30

    unbroken = as_json(vitdex("train", dataset, *args))
    assert unbroken["run_id"] == 2
    a = load_file(resumed["checkpoint"]["path"])
    b = load_file(unbroken["checkpoint"]["path"])
    assert a.keys() == b.keys()
    assert all(a[k].equal(b[k]) for k in a), "resumed weights differ from an unbroken run"


def test_background_run_on_an_rq_worker(
    dataset: str, tiny_sd: Path, rq_redis: tuple[Any, str]
) -> None:
    """`vitdex train --background` queues the run on rq; `vitdex worker --burst` trains it."""
    queued = as_json(
        vitdex(
            "train", dataset, "--base", str(tiny_sd), "--steps", "2",
            "--text-encoder-steps", "1", *TRAIN, "--background", "--json",
        )
    )  # fmt: skip
    assert queued["state"] == "queued"
    assert vitdex("worker", "--burst").returncode == 0
    run = as_json(vitdex("train", "show", str(queued["run_id"]), "--json"))
    assert run["state"] == "succeeded", run
    assert run["step"] == 3 and run["checkpoint"] is not None
    assert run["job_id"] == queued["job_id"] and run["job_state"] == "succeeded"


def test_presets_table(vitdex_env: dict[str, str]) -> None:
    """`vitdex train presets` lists each preset's settings and expected memory, growing
    with the preset; SDXL fully fine-tunes only at 24gb."""
    rows = as_json(vitdex("train", "presets", "--version", "sdxl", "--json"))
    assert [r["preset"] for r in rows] == ["8gb", "12gb", "24gb"]
    memory = [r["expected_memory_gb"] for r in rows]
    assert memory == sorted(memory) and memory[-1] <= 24
    assert [r["settings"]["lora_rank"] == 0 for r in rows] == [False, False, True]
    assert rows[-1]["settings"]["optimizer"] == "adafactor"
    table = vitdex("train", "presets").stdout.splitlines()
    assert table[0] == "memory presets for sd15"
    assert table[1].split("\t") == ["preset", "expected GiB", "fits", "settings"]
    assert [line.split("\t")[0] for line in table[2:]] == ["8gb", "12gb", "24gb"]
    assert "lora_rank=0" in table[2]
    bad = vitdex("train", "presets", "--version", "sd3", code=2)
    assert "sd3" in bad.stderr and "Traceback" not in bad.stderr


def test_full_sdxl_run_with_a_preset_and_the_new_options(
    dataset: str, tiny_sd_factory: Callable[[str], Path]
) -> None:
    """--preset 24gb on SDXL: a full fine-tune (forced on this CPU) with Adafactor and
    fused backward, the text encoders frozen; the preset says what it chose, explicit
    options win, and every new option reaches the run's config."""
    sdxl = tiny_sd_factory("sdxl")
    done = vitdex(
        "train", dataset, "--base", str(sdxl), "--preset", "24gb", "--steps", "2",
        "--caption-dropout", "0.5", "--shuffle-tags", "--keep-tokens", "2",
        "--sample-prompt", "a dog", "--sample-prompt", "a sks dog", "--sample-seed", "9",
        "--sample-steps", "3", "--sample-resolution", "64", "--no-ema", "--ema-decay", "0.99",
        "--square", "--bucket-max-upscale", "1.5", "--validation-every", "4", *TRAIN, "--json",
    )  # fmt: skip
    out = as_json(done)
    assert out["state"] == "succeeded" and out["steps"] == 2
    err = done.stderr
    assert "preset 24gb for sdxl: cache_latents=True, lora_rank=0, optimizer=adafactor" in err
    assert "fused_backward=True" in err and "kept as given: mixed_precision=no" in err
    assert "expected peak memory ~" in err
    assert "training: 2 UNet steps, 0 text-encoder steps, 2 steps in total" in err
    config = as_json(vitdex("train", "show", str(out["run_id"]), "--json"))["config"]
    expected = {
        "preset": "24gb",
        "lora_rank": 0,
        "optimizer": "adafactor",
        "fused_backward": True,
        "gradient_checkpointing": True,
        "text_encoder_steps": 0,
        "mixed_precision": "no",
        "caption_dropout": 0.5,
        "shuffle_tags": True,
        "keep_tokens": 2,
        "sample_prompts": ["a dog", "a sks dog"],
        "sample_seed": 9,
        "sample_steps": 3,
        "sample_resolution": 64,
        "ema": False,
        "ema_decay": 0.99,
        "buckets": False,
        "bucket_max_upscale": 1.5,
        "validation_every": 4,
    }
    assert {k: config[k] for k in expected} == expected
    refused = vitdex("train", dataset, "--base", str(sdxl), "--preset", "16gb", code=2)
    assert "16gb" in refused.stderr and "Traceback" not in refused.stderr
