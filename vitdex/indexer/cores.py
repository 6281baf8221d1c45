"""How the CPU cores of one indexing process are split between decoding and the model.

Decoding (read, hash, JPEG decode, resize) and the forward pass share the same cores on a
machine without a GPU. Both stages size themselves from here, so the runtimes' thread
pools and the decode workers are planned together instead of each taking every core.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cpu_budget", "decode_workers", "model_threads"]


def cpu_budget() -> int:
    """CPUs this process may use: affinity mask, narrowed by a cgroup CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    try:
        quota, _, period = Path("/sys/fs/cgroup/cpu.max").read_text().partition(" ")
        if quota != "max":
            count = min(count, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def model_threads() -> int:
    """Threads the model's runtime (torch, ONNX Runtime, OpenVINO) runs its ops on."""
    return cpu_budget()


def decode_workers(configured: int = 0) -> int:
    """Decode threads beside the model: ``configured`` when set (VITDEX_DECODE_WORKERS),
    else one per core the model leaves over, at least one."""
    if configured:
        return configured
    # Decoding a draft-mode JPEG costs a fraction of the forward pass.
    return max(1, cpu_budget() - 1)
