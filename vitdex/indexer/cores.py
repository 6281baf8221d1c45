"""How the CPU cores of one indexing process are split between decoding and the model.

Decoding (read, hash, JPEG decode, resize) and the forward pass share the same cores on a
machine without a GPU. Both stages size themselves from here, so the runtimes' thread
pools and the decode workers are planned together instead of each taking every core.

The split is a relay, not a partition. Measured on 12 MP JPEGs, decoding an image costs
a small fraction of its forward pass (~45 ms against ~450 ms for ViT-B/16 on one EPYC
core), and both stages scale with cores. A partition (some cores for decoding, the rest
for the model) leaves the decode cores idle most of the time; oversubscribing (model
threads on every core *and* decode threads beside them) preempts the runtime's worker
threads, and one late thread stalls every barrier of a matmul. So the model runs on every
core, decoding runs on every core while the model waits for images, and no decode thread
starts while a forward pass runs. Each stage then takes all cores in turn, which is the
shared-core bound ``1 / (1/decode + 1/model)`` the benchmark compares against.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CoreSplit", "core_split", "cpu_budget", "decode_workers", "model_threads"]


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


@dataclass(frozen=True)
class CoreSplit:
    """How many threads each stage runs, and when."""

    #: CPUs this process may use.
    budget: int
    #: Threads of the model's runtime (its intra-op pool).
    model_threads: int
    #: Decode threads that may run while the model waits for images.
    decode_idle: int
    #: Decode threads that may run while a forward pass runs.
    decode_busy: int

    @property
    def pool_size(self) -> int:
        """Threads the decode pool needs to run ``decode_idle`` or ``decode_busy`` at once."""
        return max(1, self.decode_idle, self.decode_busy)


def core_split(
    configured: int = 0, budget: int | None = None, *, accelerator: bool = False
) -> CoreSplit:
    """The split for ``budget`` CPUs (default :func:`cpu_budget`).

    ``configured`` (VITDEX_DECODE_WORKERS, 0 = automatic) is the number of decode threads
    allowed beside a running forward pass; while the model waits, at least every core
    decodes. With an ``accelerator`` (the forward pass runs on a GPU) the CPUs have
    nothing else to do during it, so by default all but the core feeding the GPU decode.
    """
    cores = cpu_budget() if budget is None else max(1, budget)
    if configured < 0:
        raise ValueError(f"decode workers must be >= 0, got {configured}")
    if configured:
        busy = configured
    elif accelerator:
        busy = max(1, cores - 1)
    else:
        busy = 0  # the relay: none beside a forward pass on these cores (module docstring)
    return CoreSplit(
        budget=cores, model_threads=cores, decode_idle=max(cores, busy), decode_busy=busy
    )


def model_threads() -> int:
    """Threads the model's runtime (torch, ONNX Runtime, OpenVINO) runs its ops on."""
    return core_split().model_threads


def decode_workers(configured: int = 0) -> int:
    """Size of the decode thread pool: every core (decoding takes all of them while the
    model waits), or ``configured`` (VITDEX_DECODE_WORKERS) when that is more."""
    return core_split(configured).pool_size
