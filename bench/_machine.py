"""What machine a benchmark ran on: CPU model, the instruction-set flags that decide
which precisions are fast, the cores this process may use, and package versions."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from vitdex import devices

__all__ = ["CPU_FLAGS", "cpu_flags", "has_amx", "has_hw_bf16", "machine"]

#: The flags that matter for ViT inference on a CPU, best first: AMX tiles (Sapphire
#: Rapids and later), AVX-512 bf16 dot products (Cooper Lake, Zen 4), VNNI (int8), AVX-512
#: and AVX2 (fp32).
CPU_FLAGS = (
    "amx_bf16",
    "amx_tile",
    "amx_int8",
    "avx512_bf16",
    "avx512_vnni",
    "avx512f",
    "avx2",
)
_PACKAGES = ("torch", "transformers", "pillow", "onnxruntime", "openvino", "numpy")


def _cpu_model() -> str:
    model = platform.processor()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return model
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return model


def cpu_flags() -> list[str]:
    """Which of :data:`CPU_FLAGS` this CPU reports (Linux; empty elsewhere)."""
    flags = devices.cpu_flags()
    return [flag for flag in CPU_FLAGS if flag in flags]


def has_amx(flags: list[str]) -> bool:
    """Whether ``flags`` include AMX bf16 tiles (the moonshot target applies)."""
    return "amx_bf16" in flags


def has_hw_bf16(flags: list[str]) -> bool:
    """Whether bf16 runs in hardware (else runtimes emulate it, slower than fp32)."""
    return "amx_bf16" in flags or "avx512_bf16" in flags


def machine() -> dict[str, Any]:
    """CPU model, flags, cores (all and this process's budget) and package versions."""
    from vitdex.indexer.cores import core_split

    model = _cpu_model()
    split = core_split()
    versions: dict[str, str | None] = {}
    for package in _PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": model,
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "cpu_budget": split.budget,
        "core_split": {
            "model_threads": split.model_threads,
            "decode_idle": split.decode_idle,
            "decode_busy": split.decode_busy,
        },
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        **versions,
    }
