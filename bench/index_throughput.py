"""Indexing throughput: vitdex against transformers' pipeline on the same camera JPEGs.

    python -m bench.index_throughput [--images 48] [--repeats 3] [--out results.json]
    python -m bench.index_throughput --images 4 --repeats 1          # smoke run
    python -m bench.index_throughput --legs decode,model,vitdex --runtimes torch

Writes N camera-sized JPEGs (4000x3000, quality 90; cached under ~/.cache/vitdex/bench),
saves a randomly initialised ViT-B/16 in a temporary folder (or takes ``--model``), then
runs each leg as a whole subprocess, in turns:

- ``pipeline``: ``transformers.pipeline("image-feature-extraction")`` over the file paths,
  as a user would write it (full-size PIL decode, fp32, one image at a time);
- ``decode``: vitdex's Reader path alone (read, sha256, draft decode, resize and normalise
  to the model's input tensor) on every core, no model;
- per runtime and precision (torch, onnxruntime, openvino as installed; fp32, bf16 where
  the CPU has bf16 instructions, int8 where the runtime runs it):
  ``model``: the Embedder alone on pre-decoded tensors, and
  ``vitdex``: ``vitdex index FOLDER --json`` with a fresh VITDEX_HOME each run.

Decoding and the model share the cores, so the best an indexer can do is the shared-core
bound ``1 / (1/decode + 1/model)``. For each runtime/precision the table gives vitdex
against that bound (target >= 0.85) and against the pipeline (target >= 5x; 8x on a CPU
with AMX), with PASS/MISS, and the CPU flags and cores the run saw.

Each leg reports the wall time of its whole process (imports, model load, an export the
first time) and the steady-state images/s (start-up excluded), medians over the repeats.
The pipeline leg is slow, so by default it runs once, in the middle round. Absolute
numbers drift 2-3x between runs on shared machines; the ratios, measured in the same run
on the same files, are what the targets apply to.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._legs import fmt, ratio
from bench._machine import cpu_flags, has_amx, has_hw_bf16, machine
from bench._photos import default_cache, make_photos
from bench._throughput_legs import (
    KINDS,
    Variant,
    leg_decode,
    leg_model,
    leg_pipeline,
    run_leg,
)

#: vitdex must index at least this many times faster than the pipeline baseline...
TARGET_VS_PIPELINE = 5.0
#: ...this many times on a CPU with AMX (the moonshot)...
TARGET_VS_PIPELINE_AMX = 8.0
#: ...and reach this fraction of the shared-core bound 1 / (1/decode + 1/model).
TARGET_VS_BOUND = 0.85

# What each runtime runs on a CPU when the runtimes module cannot be imported.
_FALLBACK_SUPPORTED = {
    "torch": ("fp32", "bf16"),
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
}


# --------------------------------------------------------------------------- variants


def _runtimes_module() -> tuple[tuple[str, ...], dict[str, tuple[str, ...]], Any]:
    """Runtimes, their CPU precisions and an ``installed(name)`` check."""
    try:
        from vitdex.indexer.runtimes.choice import RUNTIMES, SUPPORTED, installed
    except ImportError:  # an older vitdex: torch only
        return ("torch",), {"torch": _FALLBACK_SUPPORTED["torch"]}, lambda name: name == "torch"
    return tuple(RUNTIMES), dict(SUPPORTED), installed


def plan_variants(
    runtimes: str, precisions: str, flags: list[str]
) -> tuple[list[Variant], list[str]]:
    """The runtime/precision pairs to run, and why others were left out.

    ``runtimes`` / ``precisions``: comma-separated names or ``auto`` (every installed
    runtime; fp32, bf16 where the CPU does bf16 in hardware, int8 where the runtime runs
    it; fp16 never on a CPU, where it is emulated).
    """
    known, supported, installed = _runtimes_module()
    skipped: list[str] = []
    if runtimes == "auto":
        wanted = list(known)
    else:
        wanted = [r.strip() for r in runtimes.split(",") if r.strip()]
        unknown = [r for r in wanted if r not in known]
        if unknown:
            raise SystemExit(f"unknown runtimes {unknown}; choose from {', '.join(known)}")
    variants = []
    for runtime in wanted:
        if not installed(runtime):
            skipped.append(f"{runtime}: not installed")
            continue
        runs = [p for p in supported.get(runtime, ()) if p != "fp16"]
        if precisions == "auto":
            if not has_hw_bf16(flags) and "bf16" in runs:
                skipped.append(f"{runtime}-bf16: no bf16 instructions on this CPU")
                runs.remove("bf16")
        else:
            asked = [p.strip() for p in precisions.split(",") if p.strip()]
            skipped += [f"{runtime}-{p}: not supported" for p in asked if p not in runs]
            runs = [p for p in runs if p in asked]
        variants += [Variant(runtime, p) for p in runs]
    return variants, skipped


# --------------------------------------------------------------------------- report


def _spread(count: int, rounds: int) -> set[int]:
    """Which of ``rounds`` rounds a leg run ``count`` times takes part in (evenly spaced)."""
    if count <= 0:
        return set()
    return {min(rounds - 1, int((i + 0.5) * rounds / count)) for i in range(count)}


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def bound(decode: float | None, model: float | None) -> float | None:
    """The shared-core bound: both stages on all cores in turn, ``1/(1/d + 1/m)``."""
    if not decode or not model:
        return None
    return 1.0 / (1.0 / decode + 1.0 / model)


def _verdict(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


def summarise(runs: dict[str, list[dict[str, Any]]], amx: bool) -> dict[str, Any]:
    """Medians per leg and, per runtime/precision, the bound, the ratios and verdicts."""
    legs: dict[str, dict[str, Any]] = {}
    for leg, results in runs.items():
        legs[leg] = {
            "runs": len(results),
            "wall_s": _median([r["wall_s"] for r in results]),
            "wall_images_per_s": _median([r["wall_images_per_s"] for r in results]),
            "steady_images_per_s": _median([r["steady_images_per_s"] for r in results]),
        }

    def get(leg: str, key: str = "steady_images_per_s") -> float | None:
        value = legs.get(leg, {}).get(key)
        return float(value) if value is not None else None

    target_pipeline = TARGET_VS_PIPELINE_AMX if amx else TARGET_VS_PIPELINE
    decode, pipeline = get("decode"), get("pipeline")
    labels = sorted({leg.partition(":")[2] for leg in legs if ":" in leg})
    variants: dict[str, dict[str, Any]] = {}
    for label in labels:
        model, vitdex = get(f"model:{label}"), get(f"vitdex:{label}")
        shared = bound(decode, model)
        vs_bound, vs_pipeline = ratio(vitdex, shared), ratio(vitdex, pipeline)
        variants[label] = {
            "model": model,
            "vitdex": vitdex,
            "bound": shared,
            "vitdex_vs_bound": vs_bound,
            "vitdex_vs_model": ratio(vitdex, model),
            "vitdex_vs_pipeline": vs_pipeline,
            "vitdex_vs_pipeline_wall": ratio(
                get(f"vitdex:{label}", "wall_images_per_s"), get("pipeline", "wall_images_per_s")
            ),
            "targets": {
                "vitdex_vs_bound": {
                    "target": TARGET_VS_BOUND,
                    "pass": _verdict(vs_bound, TARGET_VS_BOUND),
                },
                "vitdex_vs_pipeline": {
                    "target": target_pipeline,
                    "pass": _verdict(vs_pipeline, target_pipeline),
                },
            },
        }
    return {"legs": legs, "variants": variants, "target_vs_pipeline": target_pipeline}


def _word(passed: bool | None) -> str:
    return "n/a" if passed is None else ("PASS" if passed else "MISS")


def print_table(summary: dict[str, Any], count: int, info: dict[str, Any]) -> None:
    """The results as plain-text tables on stdout."""
    split = info["core_split"]
    print()
    print(f"CPU: {info['cpu']}")
    print(f"CPU flags seen: {' '.join(info['cpu_flags']) or '(none of interest)'}")
    print(
        f"cores: {info['cpu_budget']} usable of {info['cores']}; model threads "
        f"{split['model_threads']}, decode threads {split['decode_idle']} while the model "
        f"waits, {split['decode_busy']} beside a forward pass"
    )
    print()
    print(f"{count} camera JPEGs, medians over the repeats")
    header = f"{'leg':<28}{'runs':>5}{'wall s':>9}{'img/s (wall)':>14}{'img/s (steady)':>16}"
    print(header)
    print("-" * len(header))
    for leg, row in summary["legs"].items():
        print(
            f"{leg:<28}{row['runs']:>5}{fmt(row['wall_s'], '.1f'):>9}"
            f"{fmt(row['wall_images_per_s']):>14}{fmt(row['steady_images_per_s']):>16}"
        )
    if not summary["variants"]:
        return
    target = summary["target_vs_pipeline"]
    print()
    head = (
        f"{'runtime-precision':<20}{'model':>8}{'vitdex':>8}{'bound':>8}"
        f"{'vitdex/bound':>14}{'':>6}{'vitdex/pipeline':>17}{'':>6}"
    )
    print(
        f"steady img/s; targets: vitdex/bound >= {TARGET_VS_BOUND:g}, "
        f"vitdex/pipeline >= {target:g}x"
    )
    print(head)
    print("-" * len(head))
    for label, row in summary["variants"].items():
        t = row["targets"]
        print(
            f"{label:<20}{fmt(row['model']):>8}{fmt(row['vitdex']):>8}{fmt(row['bound']):>8}"
            f"{fmt(row['vitdex_vs_bound']):>14}{_word(t['vitdex_vs_bound']['pass']):>6}"
            f"{fmt(row['vitdex_vs_pipeline'], '.2f') + 'x':>17}"
            f"{_word(t['vitdex_vs_pipeline']['pass']):>6}"
        )


# --------------------------------------------------------------------------- main


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.index_throughput",
        description="vitdex indexing throughput against transformers' pipeline.",
    )
    parser.add_argument("--images", type=int, default=48, help="photos to index (default 48)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of the decode, model and vitdex legs"
    )
    parser.add_argument(
        "--pipeline-repeats",
        type=int,
        default=1,
        help="runs of the slow pipeline leg, placed in the middle round(s) (default 1)",
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--legs", default=",".join(KINDS), help="comma-separated subset of " + ",".join(KINDS)
    )
    parser.add_argument(
        "--runtimes", default="auto", help="torch,onnxruntime,openvino (default: installed)"
    )
    parser.add_argument(
        "--precisions",
        default="auto",
        help="fp32,bf16,int8 (default: all each runtime runs; bf16 only with bf16 hardware)",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", default="4000x3000", help="photo size WxH (default 4000x3000)")
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument(
        "--model", type=Path, help="a ViT checkpoint folder (default: random ViT-B/16)"
    )
    parser.add_argument("--cache", type=Path, default=None, help="where generated JPEGs are kept")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per leg run")
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 when a target is missed"
    )
    # Internal: a leg running inside its own process.
    parser.add_argument("--leg", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--photos", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _child(args: argparse.Namespace) -> int:
    if args.leg == "pipeline":
        leg_pipeline(args.model, args.photos)
    elif args.leg == "decode":
        leg_decode(args.model, args.photos, args.batch_size)
    else:
        variant = Variant(args.runtimes, args.precisions)
        leg_model(args.model, args.images, args.batch_size, variant, args.home)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or, with the internal --leg flag, one leg of it)."""
    args = _parse(argv)
    if args.leg:
        return _child(args)

    kinds = [leg.strip() for leg in args.legs.split(",") if leg.strip()]
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise SystemExit(f"unknown legs {sorted(unknown)}; choose from {', '.join(KINDS)}")
    width, _, height = args.size.partition("x")
    size = (int(width), int(height))
    flags = cpu_flags()
    variants, skipped = plan_variants(args.runtimes, args.precisions, flags)
    for reason in skipped:
        print(f"skipping {reason}", file=sys.stderr)

    work = Path(tempfile.mkdtemp(prefix="vitdex-bench-"))
    try:
        started = time.perf_counter()
        photos = make_photos(
            work / "photos", args.images, size, args.quality, args.cache or default_cache()
        )
        if args.model is None:
            from vitdex.testing.vit import build_random_vit

            model = build_random_vit(work / "vit-b16-random", preset="base", seed=0)
            model_name = "random ViT-B/16 (build_random_vit preset 'base')"
        else:
            model, model_name = args.model.resolve(), str(args.model)
        print(
            f"{len(photos)} photos and {model_name} ready in "
            f"{time.perf_counter() - started:.1f} s; variants "
            f"{', '.join(v.label for v in variants) or 'none'}",
            file=sys.stderr,
        )
        ctx = {
            "images": args.images,
            "model": str(model),
            "photos": str(work / "photos"),
            "work": str(work),
            "batch_size": args.batch_size,
            "timeout": args.timeout,
        }
        legs: list[tuple[str, str, Variant | None]] = []
        for kind in kinds:
            if kind in ("model", "vitdex"):
                legs += [(f"{kind}:{v.label}", kind, v) for v in variants]
            else:
                legs.append((kind, kind, None))
        counts = {
            name: args.pipeline_repeats if kind == "pipeline" else args.repeats
            for name, kind, _ in legs
        }
        rounds = max(counts.values(), default=0)
        # Legs take turns, each spread evenly over the rounds, so that a slow spell on a
        # shared machine hits all of them alike.
        plan = {name: _spread(n, rounds) for name, n in counts.items()}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in legs}
        for run_no in range(rounds):
            for name, kind, variant in legs:
                if run_no not in plan[name]:
                    continue
                result = run_leg(kind, variant, ctx, run_no)
                runs[name].append(result)
                print(
                    f"round {run_no + 1}/{rounds} {name:<26} wall {result['wall_s']:6.1f} s  "
                    f"steady {fmt(result['steady_images_per_s'])} img/s",
                    file=sys.stderr,
                )
        runs = {name: results for name, results in runs.items() if results}
        info = machine()
        summary = summarise(runs, has_amx(flags))
        print_table(summary, args.images, info)
        if args.out:
            payload = {
                "benchmark": "index_throughput",
                "images": args.images,
                "photo_size": list(size),
                "quality": args.quality,
                "model": model_name,
                "batch_size": args.batch_size,
                "variants": [v.label for v in variants],
                "skipped": skipped,
                "machine": info,
                **summary,
                "runs": runs,
            }
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(payload, indent=2) + "\n")
            print(f"results written to {args.out}", file=sys.stderr)
        missed = [
            label
            for label, row in summary["variants"].items()
            if any(t["pass"] is False for t in row["targets"].values())
        ]
        return 1 if missed and args.strict else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
