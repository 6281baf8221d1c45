"""Pieces of ``bench.train_step``: peak memory while stepping, and the settings and
results of the feature legs (``buckets``, ``ema``, ``samples``)."""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["MemoryWatch", "option_settings", "sample_costs", "sample_images"]


class MemoryWatch:
    """Peak memory between :meth:`start` and :meth:`stop` (CUDA allocator or CPU RSS)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.base = 0
        self.peak = 0
        self._running = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Take the current level as the base and start tracking the peak."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = int(torch.cuda.memory_allocated())
            return
        self.base = _rss()
        self.peak = self.base
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def stop(self) -> dict[str, float]:
        """Peak and growth over the base, in MiB."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.peak = int(torch.cuda.max_memory_allocated())
        else:
            self._running = False
            if self._thread is not None:
                self._thread.join()
            self.peak = max(self.peak, _rss())
        mib = 1024 * 1024
        return {"peak_mb": self.peak / mib, "growth_mb": (self.peak - self.base) / mib}


def _rss() -> int:
    try:
        import psutil  # type: ignore[import-untyped, unused-ignore]

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # /proc is there on Linux
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")


def option_settings(leg: str, sample_every: int, sample_steps: int) -> dict[str, Any]:
    """The TrainConfig fields the feature legs add to the baseline's."""
    if leg == "buckets":
        return {"buckets": True}
    if leg == "ema":
        return {"ema": True}
    if leg == "samples":
        return {
            "sample_every": sample_every,
            "sample_steps": sample_steps,
            "sample_prompts": ["a photo of sks dog"],  # one image per sampling
        }
    return {}


def sample_images(work: Path, after: int, upto: int) -> int:
    """Sample images the run wrote for steps in ``(after, upto]`` (from samples.jsonl)."""
    log = work / "samples.jsonl"
    if not log.is_file():
        return 0
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines() if line.strip()]
    return sum(1 for step in steps if after < int(step) <= upto)


def sample_costs(results: list[dict[str, Any]], base_mean: float | None) -> dict[str, Any]:
    """Seconds per sample image: the samples leg's timed window beyond what as many
    baseline steps take (``base_mean``: the baseline's mean step from the same run; without
    it, the leg's own median step), per image rendered in it; medians over runs."""
    per_image = []
    for r in results:
        if r.get("sample_images"):
            step = base_mean if base_mean is not None else r["s_per_step"]
            per_image.append((r["s_timed"] - step * r["steps_timed"]) / r["sample_images"])
    return {
        "sample_images": statistics.median(r.get("sample_images", 0) for r in results),
        "s_per_sample_image": statistics.median(per_image) if per_image else None,
    }
