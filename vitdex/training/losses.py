"""A training run's logs in its folder: loss curve, validation losses and sample images.

The run's SQL row keeps only the latest (smoothed) loss; the curve the run page draws
lives beside the run's checkpoints, appended as training reports each step
(``losses.jsonl``). Training itself appends its validation losses (``validation.jsonl``)
and its sample images (``samples.jsonl``). A resumed run appends to the same files; the
last line for a step (and sample) wins. A line cut short by a crash is skipped when
reading. Nothing here imports torch: the API reads these files.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "LOSSES_FILE",
    "MAX_POINTS",
    "SAMPLES_DIR",
    "SAMPLES_FILE",
    "VALIDATION_FILE",
    "read_losses",
    "read_samples",
    "read_validation",
    "record_loss",
    "record_samples",
    "record_validation",
]

log = logging.getLogger(__name__)

LOSSES_FILE = "losses.jsonl"
VALIDATION_FILE = "validation.jsonl"
SAMPLES_FILE = "samples.jsonl"
#: The folder (in the run's folder) holding ``step-NNNNNNNN/II.png`` sample images.
SAMPLES_DIR = "samples"
#: The most points :func:`read_losses` returns; longer logs are thinned evenly (a curve on
#: a page has no use for more points than pixels).
MAX_POINTS = 2000


def _append(output_dir: Path, name: str, lines: list[dict[str, Any]]) -> None:
    """Append JSON lines to a log; a failure to write is logged and never stops training."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with (output_dir / name).open("a", encoding="utf-8") as out:
            out.writelines(json.dumps(line) + "\n" for line in lines)
    except OSError as exc:
        log.warning("cannot append to %s in %s: %s", name, output_dir, exc)


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a log, skipping lines a crash cut short."""
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            yield value


def _by_step(path: Path) -> dict[int, float]:
    by_step: dict[int, float] = {}
    for point in _lines(path):
        try:
            by_step[int(point["step"])] = float(point["loss"])
        except (ValueError, TypeError, KeyError):
            continue
    return by_step


def record_loss(output_dir: Path, step: int, loss: float) -> None:
    """Append one step's loss; a failure to write is logged and never stops training."""
    if math.isfinite(loss):
        _append(output_dir, LOSSES_FILE, [{"step": int(step), "loss": float(loss)}])


def record_validation(output_dir: Path, step: int, loss: float) -> None:
    """Append one validation measurement (written by the training loop itself)."""
    _append(output_dir, VALIDATION_FILE, [{"step": int(step), "loss": float(loss)}])


def read_validation(output_dir: Path) -> list[tuple[int, float]]:
    """Validation (step, loss) pairs, oldest step first."""
    return sorted(_by_step(output_dir / VALIDATION_FILE).items())


def record_samples(output_dir: Path, samples: list[dict[str, Any]]) -> None:
    """Append one step's sample images: ``{step, index, prompt, seed, file}`` each."""
    _append(output_dir, SAMPLES_FILE, samples)


def read_samples(output_dir: Path) -> list[dict[str, Any]]:
    """The sample images ``{step, index, prompt, seed, file}`` by (step, index)."""
    found: dict[tuple[int, int], dict[str, Any]] = {}
    for line in _lines(output_dir / SAMPLES_FILE):
        try:
            step, index = int(line["step"]), int(line["index"])
            sample = {
                "step": step,
                "index": index,
                "prompt": str(line["prompt"]),
                "seed": int(line["seed"]),
                "file": str(line["file"]),
            }
        except (ValueError, TypeError, KeyError):
            continue
        found[(step, index)] = sample
    return [found[key] for key in sorted(found)]


def read_losses(output_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) pairs oldest first, at most :data:`MAX_POINTS` (the last kept)."""
    by_step = _by_step(output_dir / LOSSES_FILE)
    steps = sorted(by_step)
    if len(steps) > MAX_POINTS:
        stride = len(steps) / MAX_POINTS
        steps = [steps[int(i * stride)] for i in range(MAX_POINTS - 1)] + [steps[-1]]
    return [(s, by_step[s]) for s in steps]
