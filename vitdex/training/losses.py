"""A training run's loss curve: one JSON line per optimizer step in the run's folder.

The run's SQL row keeps only the latest (smoothed) loss; the curve the run page draws
lives beside the run's checkpoints, appended as training reports each step. A resumed
run appends to the same file; the last line for a step wins. A line cut short by a
crash is skipped when reading.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

__all__ = ["LOSSES_FILE", "MAX_POINTS", "read_losses", "record_loss"]

log = logging.getLogger(__name__)

LOSSES_FILE = "losses.jsonl"
#: The most points :func:`read_losses` returns; longer logs are thinned evenly (a curve on
#: a page has no use for more points than pixels).
MAX_POINTS = 2000


def record_loss(output_dir: Path, step: int, loss: float) -> None:
    """Append one step's loss; a failure to write is logged and never stops training."""
    if not math.isfinite(loss):
        return
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with (output_dir / LOSSES_FILE).open("a", encoding="utf-8") as out:
            out.write(json.dumps({"step": int(step), "loss": float(loss)}) + "\n")
    except OSError as exc:
        log.warning("cannot append to the loss log in %s: %s", output_dir, exc)


def read_losses(output_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) pairs oldest first, at most :data:`MAX_POINTS` (the last kept)."""
    by_step: dict[int, float] = {}
    path = output_dir / LOSSES_FILE
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                point = json.loads(line)
                by_step[int(point["step"])] = float(point["loss"])
            except (ValueError, TypeError, KeyError):
                continue
    steps = sorted(by_step)
    if len(steps) > MAX_POINTS:
        stride = len(steps) / MAX_POINTS
        steps = [steps[int(i * stride)] for i in range(MAX_POINTS - 1)] + [steps[-1]]
    return [(s, by_step[s]) for s in steps]
