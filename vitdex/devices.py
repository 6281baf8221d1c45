"""Which torch device and precision to run on: one rule for indexing, search and training.

Imports torch, so only modules that run a model import this one.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from vitdex.errors import ConfigError

__all__ = ["cpu_flags", "default_device", "default_precision", "resolve_device"]


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (x86 ``flags``, Arm ``Features``; empty
    elsewhere); the runtimes and the benchmarks read them here."""
    try:
        with Path("/proc/cpuinfo").open() as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def default_device() -> torch.device:
    """CUDA if present, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_precision(device: torch.device | str) -> str:
    """The fastest precision the device runs natively: bf16, then fp16 (GPUs), else fp32.

    A CPU counts as native bf16 when it has AVX512-BF16 or AMX-BF16; without them bf16
    is emulated and slower than fp32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        with torch.cuda.device(device):
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if device.type == "mps":
        return "fp16"
    if device.type == "cpu" and cpu_flags() & {"avx512_bf16", "amx_bf16"}:
        return "bf16"
    return "fp32"


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda[:n]`` or ``mps``; an unusable
    device is a :class:`ConfigError`."""
    if device == "auto":
        return default_device()
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"invalid device {device!r}: use auto, cpu, cuda or mps") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but torch sees no CUDA GPU")
    if resolved.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError("device 'mps' was asked for but this torch has no MPS support")
    if resolved.type not in {"cpu", "cuda", "mps"}:
        raise ConfigError(f"unsupported device {device!r}: use auto, cpu, cuda or mps")
    return resolved
