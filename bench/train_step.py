"""DreamBooth training speed: seconds per step and peak memory for each training option.

    python -m bench.train_step                        # tiny pipeline, 64 px, CPU
    python -m bench.train_step --preset full --device cuda        # SD 1.5 at 512 px
    python -m bench.train_step --legs baseline,bf16 --steps 5 --out results.json

Builds a random-weight Stable Diffusion 1.5-shaped pipeline (``tiny``: a UNet of 32/64
channels that trains at 64 px in a few hundredths of a second; ``full``: SD 1.5's own
architecture, 860M UNet parameters, the same compute as the real model) and four
instance images, then runs each leg in its own process, so that one leg's memory does
not count against the next:

- ``baseline``: vitdex's loop in fp32, no gradient checkpointing, no latent cache;
- ``bf16`` (and ``fp16`` on CUDA): autocast forward, fp32 weights;
- ``checkpointing``: gradient checkpointing;
- ``cache``: latents encoded once before training (the VAE leaves the loop);
- ``all``: bf16 + checkpointing + cache (+ 8-bit Adam where bitsandbytes and CUDA exist);
- ``diffusers``: the loop of diffusers' ``examples/dreambooth/train_dreambooth.py`` at its
  defaults (lr 5e-6, batch 1, fp32, no checkpointing, VAE and text encoder run every
  step, torch AdamW, gradient clipping at 1.0), written out here with the same models;
- ``buckets``: aspect-ratio buckets on mixed-aspect instance images (landscape, portrait,
  square; each bucket about resolution² pixels) against the square ``baseline``;
- ``ema``: an EMA copy of the trained weights updated after every step;
- ``samples``: a sample image every ``--sample-every`` steps (``--sample-steps`` denoising
  steps): reported as the cost per sample image and the mean step with samples amortised.

The options a leg adds sit on the ``baseline`` settings (fp32, nothing else on), so each
ratio is that option's own cost. Every leg trains the UNet only (text encoder frozen, as
diffusers' default does), batch 1, no prior preservation. Reported per leg: the median
seconds per optimizer step after ``--warmup`` steps (and the mean, which counts the rare
slow step), and peak memory while stepping (CUDA: ``max_memory_allocated``; CPU: the peak
resident set, sampled every 2 ms, and its growth over the resident set when the loop
started). Ratios are against ``baseline`` from the same run; absolute times drift
2-3x between runs on shared machines.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._legs import child_result, emit, fmt, ratio, run
from bench._train_options import MemoryWatch, option_settings, sample_costs, sample_images

LEGS = (
    "baseline",
    "bf16",
    "fp16",
    "checkpointing",
    "cache",
    "all",
    "diffusers",
    "buckets",
    "ema",
    "samples",
)
#: Legs that need a GPU (CPU autocast in fp16 is emulated and says nothing useful).
CUDA_ONLY = {"fp16"}

# --------------------------------------------------------------------------- legs (children)


class _StepsDoneError(Exception):
    """Raised from the progress callback once the timed steps are done."""


def _leg_settings(leg: str, device: str) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "mixed_precision": "no",
        "gradient_checkpointing": False,
        "cache_latents": False,
        "use_8bit_adam": False,
    }
    if leg in ("bf16", "all"):
        settings["mixed_precision"] = "bf16"
    if leg == "fp16":
        settings["mixed_precision"] = "fp16"
    if leg in ("checkpointing", "all"):
        settings["gradient_checkpointing"] = True
    if leg in ("cache", "all"):
        settings["cache_latents"] = True
    if leg == "all" and device.startswith("cuda"):
        settings["use_8bit_adam"] = True  # used only where bitsandbytes is installed
    return settings


def leg_vitdex(
    leg: str,
    base: Path,
    data: Path,
    resolution: int,
    device: str,
    warmup: int,
    steps: int,
    sample_every: int = 5,
    sample_steps: int = 2,
) -> None:
    """One of vitdex's configurations: ``train`` stopped after warm-up + timed steps."""
    from vitdex.training.config import TrainConfig, TrainProgress
    from vitdex.training.dreambooth import train

    total = warmup + steps
    config = TrainConfig(
        base_model=str(base),
        instance_dir=str(data),
        instance_prompt="a photo of sks dog",
        resolution=resolution,
        force=True,
        steps=total,
        text_encoder_steps=0,
        learning_rate=5e-6,
        batch_size=1,
        save_every=0,
        device=device,
        seed=0,
        **_leg_settings(leg, device),
        **option_settings(leg, sample_every, sample_steps),
    )
    watch = MemoryWatch(device)
    stamps: list[float] = []
    result: dict[str, Any] = {}

    def progress(p: TrainProgress) -> None:
        if p.phase != "training":
            return
        if p.step == 0:
            watch.start()  # models placed, latents cached: the loop starts now
        stamps.append(time.perf_counter())
        if p.step == total:
            result.update(watch.stop())
            raise _StepsDoneError

    work = Path(tempfile.mkdtemp(prefix="vitdex-bench-run-"))
    extra: dict[str, Any] = {}
    try:
        train(config, work, on_progress=progress)
    except _StepsDoneError:
        pass
    finally:
        if leg == "samples":
            extra["sample_images"] = sample_images(work, warmup, total)
        shutil.rmtree(work, ignore_errors=True)
    settings = _leg_settings(leg, device) | option_settings(leg, sample_every, sample_steps)
    emit(_timings(stamps, warmup) | result | extra | {"settings": settings})


def leg_diffusers(
    base: Path, data: Path, resolution: int, device: str, warmup: int, steps: int
) -> None:
    """diffusers' train_dreambooth.py inner loop at its defaults, on the same models."""
    import torch
    import torch.nn.functional as functional
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from diffusers.optimization import get_scheduler

    from vitdex.training.data import Augmentation, load_examples, load_pixels

    torch.manual_seed(0)
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None)
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet.to(device)
    vae.to(device)
    text_encoder.to(device)
    unet.train()
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=5e-6, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8
    )
    lr_scheduler = get_scheduler("constant", optimizer, num_warmup_steps=0)
    examples = load_examples(data, "a photo of sks dog")
    input_ids = tokenizer(
        "a photo of sks dog",
        truncation=True,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        return_tensors="pt",
    ).input_ids
    watch = MemoryWatch(device)
    watch.start()
    stamps = [time.perf_counter()]
    for step in range(warmup + steps):
        # The example's data loader (no workers) reads and transforms the image each step.
        example = examples[step % len(examples)]
        pixels = load_pixels(example.image, resolution, Augmentation(False, 0.5, 0.5))
        pixel_values = pixels.unsqueeze(0).to(device)
        model_input = vae.encode(pixel_values).latent_dist.sample()
        model_input = model_input * vae.config.scaling_factor
        noise = torch.randn_like(model_input)
        timesteps = torch.randint(
            0, noise_scheduler.config.num_train_timesteps, (1,), device=model_input.device
        )
        noisy = noise_scheduler.add_noise(model_input, noise, timesteps)
        encoder_hidden_states = text_encoder(input_ids.to(device))[0]
        model_pred = unet(noisy, timesteps, encoder_hidden_states, return_dict=False)[0]
        loss = functional.mse_loss(model_pred.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        float(loss.detach())  # the example logs the loss every step (a device sync)
        stamps.append(time.perf_counter())
    memory = watch.stop()
    emit(_timings(stamps, warmup) | memory | {"settings": {"mixed_precision": "no"}})


def _timings(stamps: Sequence[float], warmup: int) -> dict[str, Any]:
    durations = [b - a for a, b in itertools.pairwise(stamps)]
    timed = durations[warmup:] or durations
    return {
        "steps_timed": len(timed),
        "s_per_step": statistics.median(timed) if timed else None,
        "s_per_step_min": min(timed) if timed else None,
        # The mean counts the occasional slow step (a sample image) the median hides.
        "s_per_step_mean": statistics.fmean(timed) if timed else None,
        "s_timed": sum(timed),
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# --------------------------------------------------------------------------- parent


#: Aspect ratios (width / height) of the ``buckets`` leg's instance images.
MIXED_ASPECTS = (3 / 2, 2 / 3, 1.0, 4 / 3)


def _make_data(
    folder: Path, resolution: int, count: int = 4, aspects: Sequence[float] = ()
) -> Path:
    """``count`` blurred random images, square or (``aspects``) of those shapes, each with
    about ``resolution * 1.5`` pixels on its short side so no bucket upscales them."""
    import numpy as np
    from PIL import Image, ImageFilter

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        rng = np.random.default_rng(i)
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        size = (resolution, resolution)
        if aspects:
            aspect = aspects[i % len(aspects)]
            short = resolution * 3 // 2
            size = (round(short * aspect), short) if aspect >= 1 else (short, round(short / aspect))
        image = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
        image.filter(ImageFilter.GaussianBlur(2)).save(folder / f"{i:04d}.png")
    return folder


def _run_leg(leg: str, ctx: dict[str, Any]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITDEX_")}
    env["HF_HUB_OFFLINE"] = "1"
    if ctx["threads"]:
        env["OMP_NUM_THREADS"] = str(ctx["threads"])
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path.cwd()), os.environ.get("PYTHONPATH", "")) if p
    )
    data = ctx["mixed_data"] if leg == "buckets" else ctx["data"]
    cmd = [
        sys.executable,
        "-m",
        "bench.train_step",
        *("--leg", leg, "--base", ctx["base"], "--data", data),
        *("--resolution", str(ctx["resolution"]), "--device", ctx["device"]),
        *("--warmup", str(ctx["warmup"]), "--steps", str(ctx["steps"])),
        *("--sample-every", str(ctx["sample_every"]), "--sample-steps", str(ctx["sample_steps"])),
    ]
    wall, out = run(cmd, env, ctx["timeout"])
    return child_result(out) | {"wall_s": wall}


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per leg: medians over repeats; ratios against the baseline leg."""
    legs: dict[str, dict[str, Any]] = {}
    for leg, results in runs.items():
        legs[leg] = {
            "runs": len(results),
            "s_per_step": statistics.median(r["s_per_step"] for r in results),
            # The fastest step: other processes' load only ever adds to a step's time.
            "s_per_step_best": min(r["s_per_step_min"] for r in results),
            "peak_mb": statistics.median(r["peak_mb"] for r in results),
            "growth_mb": statistics.median(r["growth_mb"] for r in results),
            "s_per_step_mean": statistics.median(r["s_per_step_mean"] for r in results),
            "settings": results[0].get("settings", {}),
        }
    base = legs.get("baseline")
    base_s = float(base["s_per_step"]) if base else None
    base_peak = float(base["peak_mb"]) if base else None
    base_mean = float(base["s_per_step_mean"]) if base else None
    if "samples" in legs:
        legs["samples"] |= sample_costs(runs["samples"], base_mean)
    for row in legs.values():
        row["speedup_vs_baseline"] = ratio(base_s, row["s_per_step"])
        row["peak_vs_baseline"] = ratio(row["peak_mb"], base_peak)
        # Amortised: the mean step (samples included) against the baseline's mean step.
        row["mean_step_vs_baseline"] = ratio(row["s_per_step_mean"], base_mean)
    return {"legs": legs}


def print_table(summary: dict[str, Any], title: str, cuda: bool) -> None:
    """The results as a plain-text table on stdout."""
    memory = "peak alloc MiB" if cuda else "peak RSS MiB"
    print()
    print(title)
    header = (
        f"{'leg':<15}{'s/step':>9}{'best s':>9}{'steps/s':>9}{memory:>16}{'growth MiB':>12}"
        f"{'speed vs base':>15}{'peak vs base':>14}"
    )
    print(header)
    print("-" * len(header))
    for leg, row in summary["legs"].items():
        rate = 1 / row["s_per_step"] if row["s_per_step"] else None
        print(
            f"{leg:<15}{fmt(row['s_per_step'], '.3f'):>9}{fmt(row['s_per_step_best'], '.3f'):>9}"
            f"{fmt(rate, '.2f'):>9}"
            f"{fmt(row['peak_mb'], '.0f'):>16}{fmt(row['growth_mb'], '.0f'):>12}"
            f"{fmt(row['speedup_vs_baseline'], '.2f') + 'x':>15}"
            f"{fmt(row['peak_vs_baseline'], '.2f') + 'x':>14}"
        )
    legs = summary["legs"]
    if "samples" in legs:
        row = legs["samples"]
        every = row["settings"].get("sample_every")
        print()
        print(
            f"samples (one image every {every} steps, {row['settings'].get('sample_steps')} "
            f"denoising steps): {fmt(row['s_per_sample_image'], '.3f')} s per image, "
            f"mean step {fmt(row['s_per_step_mean'], '.3f')} s amortised = "
            f"{fmt(row['mean_step_vs_baseline'], '.2f')}x the baseline's mean step"
        )
    if "diffusers" in legs and "all" in legs:
        speed = ratio(legs["diffusers"]["s_per_step"], legs["all"]["s_per_step"])
        peak = ratio(legs["all"]["peak_mb"], legs["diffusers"]["peak_mb"])
        print()
        print(f"vitdex 'all' vs diffusers' defaults: {fmt(speed, '.2f')}x the speed, ", end="")
        print(f"{fmt(peak, '.2f')}x the peak memory")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.train_step",
        description="DreamBooth seconds per step and peak memory, per training option.",
    )
    parser.add_argument("--preset", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument(
        "--resolution", type=int, default=None, help="pixels (default: 64 tiny, 512 full)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="runs per leg (default 3 tiny, 1 full)"
    )
    parser.add_argument("--legs", default=None, help=f"comma-separated subset of {LEGS}")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads per leg (default: torch's)"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per leg run")
    parser.add_argument(
        "--sample-every", type=int, default=5, help="samples leg: steps between samples (5)"
    )
    parser.add_argument(
        "--sample-steps", type=int, default=2, help="samples leg: denoising steps (2)"
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    # Internal: one leg inside its own process.
    parser.add_argument("--leg", choices=LEGS, help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or, with the internal --leg flag, one leg of it)."""
    args = _parse(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU")
    resolution = args.resolution or (512 if args.preset == "full" else 64)
    if args.leg:
        if args.leg == "diffusers":
            leg_diffusers(args.base, args.data, resolution, device, args.warmup, args.steps)
        else:
            leg_vitdex(
                args.leg,
                args.base,
                args.data,
                resolution,
                device,
                args.warmup,
                args.steps,
                args.sample_every,
                args.sample_steps,
            )
        return 0

    cuda = device.startswith("cuda")
    if args.legs:
        legs = [leg.strip() for leg in args.legs.split(",") if leg.strip()]
    else:
        legs = [leg for leg in LEGS if cuda or leg not in CUDA_ONLY]
    unknown = set(legs) - set(LEGS)
    if unknown or not legs:
        raise SystemExit(f"unknown legs {sorted(unknown)}; choose from {', '.join(LEGS)}")

    from vitdex.testing.sd import build_random_sd

    work = Path(tempfile.mkdtemp(prefix="vitdex-bench-train-"))
    try:
        started = time.perf_counter()
        base = build_random_sd(work / "base", version="sd15", preset=args.preset, seed=0)
        data = _make_data(work / "instance", resolution)
        mixed = _make_data(work / "instance-mixed", resolution, aspects=MIXED_ASPECTS)
        print(
            f"random SD 1.5 ({args.preset}) pipeline ready in "
            f"{time.perf_counter() - started:.1f} s; device {device}, {resolution} px",
            file=sys.stderr,
        )
        ctx = {
            "base": str(base),
            "data": str(data),
            "mixed_data": str(mixed),
            "sample_every": args.sample_every,
            "sample_steps": args.sample_steps,
            "resolution": resolution,
            "device": device,
            "warmup": args.warmup,
            "steps": args.steps,
            "timeout": args.timeout,
            "threads": args.threads,
        }
        runs: dict[str, list[dict[str, Any]]] = {leg: [] for leg in legs}
        # Legs take turns round by round, so a slow spell on a shared machine hits all alike.
        repeats = args.repeats or (3 if args.preset == "tiny" else 1)
        for round_no in range(repeats):
            for leg in legs:
                result = _run_leg(leg, ctx)
                runs[leg].append(result)
                print(
                    f"round {round_no + 1}/{repeats} {leg:<14}"
                    f"{fmt(result['s_per_step'], '.3f')} s/step  peak {result['peak_mb']:.0f} MiB  "
                    f"(wall {result['wall_s']:.1f} s)",
                    file=sys.stderr,
                )
        summary = summarise(runs)
        title = (
            f"SD 1.5 {args.preset} (random weights), {resolution} px, batch 1, UNet only, "
            f"{device}; s/step: median of {args.steps} steps after {args.warmup} warm-up, "
            f"median over {repeats} run(s)"
        )
        print_table(summary, title, cuda)
        if args.out:
            payload = {
                "benchmark": "train_step",
                "preset": args.preset,
                "resolution": resolution,
                "device": device,
                "gpu": torch.cuda.get_device_name() if cuda else None,
                "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(),
                **summary,
                "runs": runs,
            }
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(payload, indent=2) + "\n")
            print(f"results written to {args.out}", file=sys.stderr)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
