"""The legs of ``bench.index_throughput``: what each child process runs, and how the
parent starts one and reads its result back.

Legs: ``pipeline`` (transformers' pipeline, the naive baseline), ``decode`` (vitdex's
Reader path up to the model's input tensor, no model, all cores), and per runtime and
precision ``model`` (the Embedder alone on pre-decoded tensors) and ``vitdex``
(``vitdex index``, the whole command).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._legs import child_result, emit, run

__all__ = [
    "KINDS",
    "Variant",
    "leg_decode",
    "leg_model",
    "leg_pipeline",
    "run_leg",
    "steady",
]

#: Leg kinds; ``model`` and ``vitdex`` run once per runtime/precision variant.
KINDS = ("pipeline", "decode", "model", "vitdex")
# Worker-thread stage times in vitdex's report overlap the main loop; they are not added.
_WORKER_STAGES = {"decode", "read_hash"}


@dataclass(frozen=True)
class Variant:
    """A runtime with the precision it runs in (``torch``/``bf16``)."""

    runtime: str
    precision: str

    @property
    def label(self) -> str:
        """``torch-bf16``: how the table and the JSON name it."""
        return f"{self.runtime}-{self.precision}"


def steady(done: Sequence[float], skip: int = 1) -> float | None:
    """Images/s between the ``skip``-th finished image and the last one."""
    if len(done) <= skip:
        return None
    span = done[-1] - done[skip - 1]
    return (len(done) - skip) / span if span > 0 else None


# --------------------------------------------------------------------------- children


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
            "steady_images_per_s": steady(done),
            "dtype": str(extractor.model.dtype).removeprefix("torch."),
            "torch_threads": _torch_threads(),
        }
    )


def leg_decode(model: Path, photos: Path, batch_size: int) -> None:
    """Decode only: read, hash, draft-decode and preprocess every photo into the model's
    input tensors, through the indexer's own Reader (all cores, no model)."""
    started = time.perf_counter()
    from vitdex.config import load_settings
    from vitdex.indexer.preprocessing import pixel_batch, read_preprocessing
    from vitdex.indexer.stages import Reader, Task

    config = json.loads((model / "config.json").read_text())
    side = config.get("image_size", 224)
    prep = read_preprocessing(model, side if isinstance(side, int) else int(side[0]))
    height, width = prep.input_size
    settings = load_settings()
    timings: defaultdict[str, float] = defaultdict(float)
    reader = Reader(settings, {0: (photos.resolve(),)}, (width, height), timings)
    files = sorted(photos.resolve().glob("*.jpg"))
    tasks = [
        Task(i, str(p), p.stat().st_size, p.stat().st_mtime_ns, None, False, 0)
        for i, p in enumerate(files)
    ]
    ready = time.perf_counter()
    images, done, failed = [], [], 0
    for item in reader.stream(tasks, {}):
        if item.decoded is None:
            failed += 1
            continue
        images.append(item.decoded.image)
        if len(images) == batch_size:
            pixel_batch(images, prep)
            done.extend([time.perf_counter()] * len(images))
            images = []
    if images:
        pixel_batch(images, prep)
        done.extend([time.perf_counter()] * len(images))
    finished = time.perf_counter()
    if failed:
        raise SystemExit(f"{failed} photos failed to decode")
    split = reader.split()
    emit(
        {
            "images": len(done),
            "startup_s": ready - started,
            # All of it: decoding has no warm-up worth excluding.
            "steady_images_per_s": len(done) / (finished - ready),
            "decode_threads": split.decode_idle,
            "cpu_budget": split.budget,
            "worker_s": {k: round(v, 4) for k, v in timings.items()},
        }
    )


def leg_model(
    model: Path, count: int, batch_size: int, variant: Variant, home: Path | None
) -> None:
    """Model-only ceiling: the Embedder on pre-decoded, preprocessed tensors."""
    started = time.perf_counter()
    import numpy as np
    from PIL import Image

    from vitdex.indexer.embedder import Embedder

    kwargs: dict[str, Any] = {"precision": variant.precision, "batch_size": batch_size}
    if variant.runtime != "torch" or home is not None:
        kwargs.update(runtime=variant.runtime, home=home)
    embedder = Embedder(str(model), **kwargs)
    embedder.load()
    height, width = embedder.input_size
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
        for _ in range(batch_size)
    ]
    pixels = embedder.preprocess(images)
    # Warm-up: oneDNN (and the exports' runtimes) build kernels per input shape on its
    # first call, so both shapes the timed loop uses are run once first.
    for shape in {min(batch_size, count), count % batch_size} - {0}:
        embedder.embed_pixels(pixels[:shape])
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
            "runtime": getattr(embedder, "runtime", "torch"),
            "precision": embedder.precision,
            "device": str(embedder.device),
            "batch_size": batch_size,
            "torch_threads": _torch_threads(),
        }
    )


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


# --------------------------------------------------------------------------- parent


def _vitdex_command() -> list[str]:
    script = Path(sys.executable).with_name("vitdex")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "vitdex"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITDEX_")}
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path.cwd()), os.environ.get("PYTHONPATH", "")) if p
    )
    return env


def _fresh_home(ctx: dict[str, Any], name: str) -> Path:
    """An empty VITDEX_HOME whose ``exports`` are shared by every run of the benchmark, so
    an ONNX/OpenVINO export is made once (by the first leg that needs it), not per run."""
    home = Path(ctx["work"]) / name
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    exports = Path(ctx["work"]) / "shared-home" / "exports"
    exports.mkdir(parents=True, exist_ok=True)
    (home / "exports").symlink_to(exports, target_is_directory=True)
    return home


def run_leg(kind: str, variant: Variant | None, ctx: dict[str, Any], run_no: int) -> dict[str, Any]:
    """Run one leg once as a subprocess; returns its measurements."""
    env = _env()
    count = ctx["images"]
    me = [sys.executable, "-m", "bench.index_throughput"]
    base = ["--model", ctx["model"], "--batch-size", str(ctx["batch_size"])]
    if kind in ("pipeline", "decode"):
        cmd = [*me, "--leg", kind, *base, "--photos", ctx["photos"]]
        wall, out = run(cmd, env, ctx["timeout"])
        data = child_result(out)
    elif kind == "model":
        assert variant is not None
        cmd = [
            *me,
            *("--leg", "model", *base, "--images", str(count)),
            *("--runtimes", variant.runtime, "--precisions", variant.precision),
            *("--home", str(Path(ctx["work"]) / "shared-home")),
        ]
        wall, out = run(cmd, env, ctx["timeout"])
        data = child_result(out)
    elif kind == "vitdex":
        assert variant is not None
        data, wall = _run_vitdex(variant, ctx, env, run_no)
    else:
        raise ValueError(kind)
    data.update({"wall_s": wall, "wall_images_per_s": count / wall})
    return data


def _run_vitdex(
    variant: Variant, ctx: dict[str, Any], env: dict[str, str], run_no: int
) -> tuple[dict[str, Any], float]:
    count = ctx["images"]
    home = _fresh_home(ctx, f"vitdex-home-{variant.label}-{run_no}")
    env.update(
        {
            "VITDEX_HOME": str(home),
            "VITDEX_MODEL": ctx["model"],
            "VITDEX_RUNTIME": variant.runtime,
            "VITDEX_PRECISION": variant.precision,
            "VITDEX_BATCH_SIZE": str(ctx["batch_size"]),
        }
    )
    cmd = [*_vitdex_command(), "index", ctx["photos"], "--json", "--no-progress"]
    try:
        wall, out = run(cmd, env, ctx["timeout"])
    finally:
        shutil.rmtree(home, ignore_errors=True)
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
    data = {
        "scanned": report.get("scanned"),
        "embedded": embedded,
        "failed": report.get("failed"),
        "elapsed_s": report.get("elapsed"),
        "timings": timings,
        "steady_method": method,
        "steady_images_per_s": embedded / loop_s if loop_s > 0 else None,
    }
    return data, wall
