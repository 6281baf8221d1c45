"""Indexing throughput: vitdex against transformers' pipeline on the same camera JPEGs.

    python -m bench.index_throughput [--images 48] [--repeats 3] [--out results.json]
    python -m bench.index_throughput --images 16 --repeats 1 --legs vitdex,model

Writes N camera-sized JPEGs (4000x3000, quality 90; cached under ~/.cache/vitdex/bench),
saves a randomly initialised ViT-B/16 in a temporary folder, then runs three legs, each
as a whole subprocess, in turns:

- ``pipeline``: ``transformers.pipeline("image-feature-extraction")`` over the file paths,
  as a user would write it (full-size PIL decode, fp32, one image at a time);
- ``vitdex``: ``vitdex index FOLDER --json`` with a fresh VITDEX_HOME each run;
- ``model``: the vitdex Embedder alone on pre-decoded tensors, at the precision and batch
  size vitdex uses: the ceiling for the vitdex leg.

For each leg it reports the wall time of the whole process (imports and model load
included) and the steady-state images/s (start-up excluded), medians over the repeats.
The pipeline leg is slow, so by default it runs once, in the middle round.
Absolute numbers drift 2-3x between runs on shared machines; the ratios, measured in the
same run on the same files, are what the targets apply to.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench._legs import child_result, emit, fmt, ratio, run

#: vitdex must index at least this many times faster than the pipeline baseline...
TARGET_VS_PIPELINE = 5.0
#: ...and keep at least this fraction of the model-only throughput end to end.
TARGET_VS_MODEL = 0.7

LEGS = ("pipeline", "vitdex", "model")
# Worker-thread stage times in vitdex's report overlap the main loop; they are not added.
_WORKER_STAGES = {"decode", "read_hash"}


# --------------------------------------------------------------------------- photos


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vitdex" / "bench"


def _camera_jpeg(path: Path, size: tuple[int, int], seed: int, quality: int) -> Path:
    """A camera-sized, photo-like JPEG: a smooth scene plus sensor-like noise."""
    try:
        from tests.photos import make_camera_jpeg
    except ImportError:  # running outside the source tree
        import numpy as np
        from PIL import Image, ImageFilter

        width, height = size
        rng = np.random.default_rng(seed)
        small = rng.integers(0, 256, size=(max(4, height // 400), max(4, width // 400), 3))
        scene = Image.fromarray(small.astype(np.uint8), "RGB").resize(
            size, Image.Resampling.BICUBIC
        )
        scene = scene.filter(ImageFilter.GaussianBlur(8))
        pixels = np.asarray(scene).astype(np.int16)
        pixels += rng.integers(-12, 13, size=(height, width, 1), dtype=np.int16)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(
            path, "JPEG", quality=quality
        )
        return path
    return make_camera_jpeg(path, size=size, seed=seed, quality=quality)


def _one_photo(args: tuple[str, tuple[int, int], int, int]) -> str:
    path, size, seed, quality = args
    tmp = Path(path).with_suffix(".part")
    _camera_jpeg(tmp, size, seed, quality)
    tmp.replace(path)  # only complete files count as cached
    return path


def make_photos(
    folder: Path, count: int, size: tuple[int, int], quality: int, cache: Path
) -> list[Path]:
    """``count`` distinct camera JPEGs in ``folder`` (hard links into a reusable cache)."""
    store = cache / f"jpeg-{size[0]}x{size[1]}-q{quality}"
    store.mkdir(parents=True, exist_ok=True)
    wanted = [store / f"photo-{seed:05d}.jpg" for seed in range(count)]
    missing = [p for p in wanted if not p.is_file()]
    if missing:
        started = time.perf_counter()
        jobs = [(str(p), size, int(p.stem.split("-")[1]), quality) for p in missing]
        with ProcessPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
            list(pool.map(_one_photo, jobs))
        print(
            f"wrote {len(missing)} JPEGs of {size[0]}x{size[1]} to {store} "
            f"in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in wanted:
        target = folder / path.name
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)
        out.append(target)
    return out


# --------------------------------------------------------------------------- legs (children)


def leg_pipeline(model: Path, photos: Path) -> None:
    """The naive baseline: transformers' feature-extraction pipeline over file paths."""
    started = time.perf_counter()
    from transformers import pipeline

    extractor: Any = pipeline("image-feature-extraction", model=str(model), device="cpu")
    ready = time.perf_counter()
    files = sorted(str(p) for p in photos.glob("*.jpg"))
    done: list[float] = []
    # A generator makes the pipeline stream results; a list would return them all at the end.
    for _ in extractor(path for path in files):
        done.append(time.perf_counter())
    emit(
        {
            "images": len(files),
            "startup_s": ready - started,
            "first_s": done[0] - ready if done else None,
            "steady_images_per_s": _steady(done),
            "dtype": str(extractor.model.dtype).removeprefix("torch."),
        }
    )


def leg_model(model: Path, count: int, batch_size: int, precision: str) -> None:
    """Model-only ceiling: the Embedder on pre-decoded, preprocessed tensors."""
    started = time.perf_counter()
    import numpy as np
    from PIL import Image

    from vitdex.indexer.embedder import Embedder

    embedder = Embedder(str(model), precision=precision, batch_size=batch_size)
    embedder.load()
    height, width = embedder.input_size
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
        for _ in range(batch_size)
    ]
    pixels = embedder.preprocess(images)
    embedder.embed_pixels(pixels)  # warm-up: oneDNN builds its kernels on the first call
    ready = time.perf_counter()
    total = 0
    while total < count:
        chunk = pixels[: min(batch_size, count - total)]
        embedder.embed_pixels(chunk)
        total += chunk.shape[0]
    finished = time.perf_counter()
    emit(
        {
            "images": total,
            "startup_s": ready - started,
            "steady_images_per_s": total / (finished - ready),
            "precision": embedder.precision,
            "device": str(embedder.device),
            "batch_size": batch_size,
            "torch_threads": _torch_threads(),
        }
    )


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _steady(done: Sequence[float], skip: int = 1) -> float | None:
    """Images/s between the ``skip``-th finished image and the last one."""
    if len(done) <= skip:
        return None
    span = done[-1] - done[skip - 1]
    return (len(done) - skip) / span if span > 0 else None


# --------------------------------------------------------------------------- legs (parent)


def _vitdex_command() -> list[str]:
    script = Path(sys.executable).with_name("vitdex")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "vitdex"]


def run_leg(leg: str, ctx: dict[str, Any], run_no: int) -> dict[str, Any]:
    """Run one leg once as a subprocess; returns its measurements."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITDEX_")}
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path.cwd()), os.environ.get("PYTHONPATH", "")) if p
    )
    count = ctx["images"]
    me = [sys.executable, "-m", "bench.index_throughput"]
    if leg == "pipeline":
        cmd = [*me, "--leg", "pipeline", "--model", ctx["model"], "--photos", ctx["photos"]]
        wall, out = run(cmd, env, ctx["timeout"])
        data = child_result(out)
        steady = data["steady_images_per_s"]
    elif leg == "model":
        cmd = [
            *me,
            *("--leg", "model", "--model", ctx["model"], "--images", str(count)),
            *("--batch-size", str(ctx["batch_size"]), "--precision", ctx["precision"]),
        ]
        wall, out = run(cmd, env, ctx["timeout"])
        data = child_result(out)
        steady = data["steady_images_per_s"]
    elif leg == "vitdex":
        home = Path(ctx["work"]) / f"vitdex-home-{run_no}"
        shutil.rmtree(home, ignore_errors=True)
        env.update(
            {
                "VITDEX_HOME": str(home),
                "VITDEX_MODEL": ctx["model"],
                "VITDEX_PRECISION": ctx["precision"],
                "VITDEX_BATCH_SIZE": str(ctx["batch_size"]),
            }
        )
        cmd = [*_vitdex_command(), "index", ctx["photos"], "--json", "--no-progress"]
        wall, out = run(cmd, env, ctx["timeout"])
        start = out.find("{")
        if start < 0:
            raise RuntimeError(f"vitdex index printed no JSON:\n{out[-2000:]}")
        report = json.loads(out[start:])
        timings = {k: float(v) for k, v in report.get("timings", {}).items()}
        load = timings.get("load_model", timings.get("load"))
        if load is not None:
            loop_s, method = float(report["elapsed"]) - load, "elapsed - load"
        else:
            loop_s = sum(v for k, v in timings.items() if k not in _WORKER_STAGES)
            method = "sum of main-loop stages"
        embedded = int(report.get("embedded", 0))
        if embedded != count or report.get("failed"):
            raise RuntimeError(f"vitdex embedded {embedded} of {count}: {report}")
        steady = embedded / loop_s if loop_s > 0 else None
        data = {
            "scanned": report.get("scanned"),
            "embedded": embedded,
            "failed": report.get("failed"),
            "elapsed_s": report.get("elapsed"),
            "timings": timings,
            "steady_method": method,
        }
        shutil.rmtree(home, ignore_errors=True)
    else:
        raise ValueError(leg)
    data.update(
        {
            "wall_s": wall,
            "wall_images_per_s": count / wall,
            "steady_images_per_s": steady,
        }
    )
    return data


# --------------------------------------------------------------------------- report


def _spread(count: int, rounds: int) -> set[int]:
    """Which of ``rounds`` rounds a leg run ``count`` times takes part in (evenly spaced)."""
    if count <= 0:
        return set()
    return {min(rounds - 1, int((i + 0.5) * rounds / count)) for i in range(count)}


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per leg, the two ratios and their verdicts."""
    legs: dict[str, dict[str, Any]] = {}
    for leg, results in runs.items():
        legs[leg] = {
            "runs": len(results),
            "wall_s": _median([r["wall_s"] for r in results]),
            "wall_images_per_s": _median([r["wall_images_per_s"] for r in results]),
            "steady_images_per_s": _median([r["steady_images_per_s"] for r in results]),
        }

    def get(leg: str, key: str) -> float | None:
        value = legs.get(leg, {}).get(key)
        return float(value) if value is not None else None

    vs_pipeline = ratio(
        get("vitdex", "steady_images_per_s"), get("pipeline", "steady_images_per_s")
    )
    vs_model = ratio(get("vitdex", "steady_images_per_s"), get("model", "steady_images_per_s"))
    return {
        "legs": legs,
        "vitdex_vs_pipeline": vs_pipeline,
        "vitdex_vs_pipeline_wall": ratio(
            get("vitdex", "wall_images_per_s"), get("pipeline", "wall_images_per_s")
        ),
        "vitdex_vs_model": vs_model,
        "targets": {
            "vitdex_vs_pipeline": {
                "target": TARGET_VS_PIPELINE,
                "pass": None if vs_pipeline is None else vs_pipeline >= TARGET_VS_PIPELINE,
            },
            "vitdex_vs_model": {
                "target": TARGET_VS_MODEL,
                "pass": None if vs_model is None else vs_model >= TARGET_VS_MODEL,
            },
        },
    }


def print_table(summary: dict[str, Any], count: int) -> None:
    """The results as a plain-text table on stdout."""
    names = {
        "pipeline": "transformers pipeline",
        "vitdex": "vitdex index",
        "model": "model only (Embedder)",
    }
    print()
    print(f"{count} camera JPEGs, medians over the repeats")
    header = f"{'leg':<24}{'runs':>5}{'wall s':>9}{'img/s (wall)':>14}{'img/s (steady)':>16}"
    print(header)
    print("-" * len(header))
    for leg, row in summary["legs"].items():
        print(
            f"{names.get(leg, leg):<24}{row['runs']:>5}{fmt(row['wall_s'], '.1f'):>9}"
            f"{fmt(row['wall_images_per_s']):>14}{fmt(row['steady_images_per_s']):>16}"
        )
    print()

    def verdict(key: str) -> str:
        passed = summary["targets"][key]["pass"]
        return "n/a" if passed is None else ("PASS" if passed else "FAIL")

    print(
        f"vitdex / pipeline (steady):    {fmt(summary['vitdex_vs_pipeline'])}x   "
        f"target >= {TARGET_VS_PIPELINE:g}x   {verdict('vitdex_vs_pipeline')}"
    )
    print(f"vitdex / pipeline (wall):      {fmt(summary['vitdex_vs_pipeline_wall'])}x")
    print(
        f"vitdex / model-only (steady):  {fmt(summary['vitdex_vs_model'])}x   "
        f"target >= {TARGET_VS_MODEL:g}x   {verdict('vitdex_vs_model')}"
    )


def _machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
    for package in ("torch", "transformers", "pillow"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.partition(":")[2].split())
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cpu_bf16": sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"}),
        "python": platform.python_version(),
        **versions,
    }


# --------------------------------------------------------------------------- main


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.index_throughput",
        description="vitdex indexing throughput against transformers' pipeline.",
    )
    parser.add_argument("--images", type=int, default=48, help="photos to index (default 48)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of the vitdex and model legs (default 3)"
    )
    parser.add_argument(
        "--pipeline-repeats",
        type=int,
        default=1,
        help="runs of the slow pipeline leg, placed in the middle round(s) (default 1)",
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--legs", default=",".join(LEGS), help="comma-separated subset of pipeline,vitdex,model"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--size", default="4000x3000", help="photo size WxH (default 4000x3000)")
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--cache", type=Path, default=None, help="where generated JPEGs are kept")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per leg run")
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 when a target is missed"
    )
    # Internal: a leg running inside its own process.
    parser.add_argument("--leg", choices=LEGS, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--photos", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or, with the internal --leg flag, one leg of it)."""
    args = _parse(argv)
    if args.leg == "pipeline":
        leg_pipeline(args.model, args.photos)
        return 0
    if args.leg == "model":
        leg_model(args.model, args.images, args.batch_size, args.precision)
        return 0

    legs = [leg.strip() for leg in args.legs.split(",") if leg.strip()]
    unknown = set(legs) - set(LEGS)
    if unknown or not legs:
        raise SystemExit(f"unknown legs {sorted(unknown)}; choose from {', '.join(LEGS)}")
    width, _, height = args.size.partition("x")
    size = (int(width), int(height))

    from vitdex.devices import default_device, default_precision
    from vitdex.testing.vit import build_random_vit

    device = default_device()
    precision = default_precision(device) if args.precision == "auto" else args.precision
    work = Path(tempfile.mkdtemp(prefix="vitdex-bench-"))
    try:
        started = time.perf_counter()
        photos = make_photos(
            work / "photos", args.images, size, args.quality, args.cache or _default_cache()
        )
        model = build_random_vit(work / "vit-b16-random", preset="base", seed=0)
        print(
            f"{len(photos)} photos and a random ViT-B/16 ready in "
            f"{time.perf_counter() - started:.1f} s; device {device}, precision {precision}",
            file=sys.stderr,
        )
        ctx = {
            "images": args.images,
            "model": str(model),
            "photos": str(work / "photos"),
            "work": str(work),
            "batch_size": args.batch_size,
            "precision": precision,
            "timeout": args.timeout,
        }
        runs: dict[str, list[dict[str, Any]]] = {leg: [] for leg in legs}
        counts = {leg: args.pipeline_repeats if leg == "pipeline" else args.repeats for leg in legs}
        rounds = max(counts.values())
        # Legs take turns, each spread evenly over the rounds, so that a slow spell on a
        # shared machine hits all of them alike.
        plan = {leg: _spread(n, rounds) for leg, n in counts.items()}
        for run_no in range(rounds):
            for leg in legs:
                if run_no not in plan[leg]:
                    continue
                result = run_leg(leg, ctx, run_no)
                runs[leg].append(result)
                print(
                    f"round {run_no + 1}/{rounds} {leg:<8} wall {result['wall_s']:6.1f} s  "
                    f"steady {fmt(result['steady_images_per_s'])} img/s",
                    file=sys.stderr,
                )
        summary = summarise(runs)
        print_table(summary, args.images)
        if args.out:
            payload = {
                "benchmark": "index_throughput",
                "images": args.images,
                "photo_size": list(size),
                "quality": args.quality,
                "model": "random ViT-B/16 (build_random_vit preset 'base')",
                "device": str(device),
                "precision": precision,
                "batch_size": args.batch_size,
                "machine": _machine(),
                **summary,
                "runs": runs,
            }
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(payload, indent=2) + "\n")
            print(f"results written to {args.out}", file=sys.stderr)
        failed = [k for k, v in summary["targets"].items() if v["pass"] is False]
        return 1 if failed and args.strict else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
