"""Which runtimes and precisions exist, which pairs are allowed, and the agreement bounds.

Every runtime runs the same ViT; what differs is how far its vectors drift from torch in
fp32, the reference. Each precision family has a bound on the least cosine (over the
probe photos, per space) to those reference vectors: a runtime below its own bound is
refused, and a space keeps the bound of the runtime that created it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from vitdex.errors import ConfigError

__all__ = [
    "FP_BOUND",
    "INT8_BOUND",
    "RUNTIMES",
    "SUPPORTED",
    "RuntimeChoice",
    "bound_for",
    "check_choice",
    "installed",
]

#: torch, ONNX Runtime and OpenVINO with their optional packages (the ``runtimes`` extra).
RUNTIMES = ("torch", "onnxruntime", "openvino")

#: Precisions each runtime runs on a CPU, from the runtimes' documentation and measured
#: agreement: ONNX Runtime's CPU provider has no bf16 kernels for ViT's ops and its fp16
#: falls back to casts, so it runs fp32 or an int8-quantized graph; OpenVINO's CPU
#: plugin runs fp32, bf16 (INFERENCE_PRECISION_HINT) and int8 graphs; torch runs the
#: float dtypes (fp16 on a CPU is emulated, see vitdex.devices).
SUPPORTED: dict[str, tuple[str, ...]] = {
    "torch": ("fp32", "bf16", "fp16"),
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
}

#: Least per-space cosine to torch fp32 for the float precisions: a vector this close
#: ranks neighbours the same as the reference for all practical purposes.
FP_BOUND = 0.999
#: Least per-space cosine for int8 (dynamic quantization: int8 weights per channel,
#: activations quantized per batch). Measured minima on the probe photos: 0.99993 on the
#: tiny test ViT and 0.9975 on a random ViT-B/16 (onnxruntime and openvino alike), with
#: the real google/vit-base-patch16-224 known to sit closer to 1 than random weights; 0.99
#: leaves room for other checkpoints while still refusing a broken quantization
#: (those land far below 0.9).
INT8_BOUND = 0.99

_MODULES = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}


def installed(runtime: str) -> bool:
    """Whether the runtime's Python package can be imported here (nothing is imported)."""
    return importlib.util.find_spec(_MODULES[runtime]) is not None


def bound_for(precision: str) -> float:
    """The agreement a runtime in ``precision`` must reach (int8's or the float bound)."""
    return INT8_BOUND if precision == "int8" else FP_BOUND


@dataclass(frozen=True)
class RuntimeChoice:
    """A runtime with the precision it runs in."""

    runtime: str
    precision: str

    @property
    def label(self) -> str:
        """How spaces and reports name it: ``onnxruntime-int8``."""
        return f"{self.runtime}-{self.precision}"

    @property
    def bound(self) -> float:
        """The least agreement this precision must reach."""
        return bound_for(self.precision)


def check_choice(runtime: str, precision: str, device_type: str) -> RuntimeChoice:
    """``runtime`` in ``precision`` on a ``device_type`` device, or a :class:`ConfigError`
    naming what is supported instead. ``precision`` is concrete here (not ``auto``)."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"invalid runtime {runtime!r}: use auto, {', '.join(RUNTIMES)}")
    allowed = SUPPORTED[runtime]
    if precision not in allowed:
        hint = (
            " (int8 needs VITDEX_RUNTIME=onnxruntime or openvino and `pip install "
            "vitdex[runtimes]`)"
            if precision == "int8"
            else ""
        )
        raise ConfigError(
            f"runtime {runtime} does not run precision {precision}: it runs "
            f"{', '.join(allowed)}{hint}"
        )
    if runtime != "torch":
        if device_type != "cpu":
            raise ConfigError(
                f"runtime {runtime} runs on the CPU here; on device {device_type!r} use "
                "VITDEX_RUNTIME=torch (or auto)"
            )
        if not installed(runtime):
            raise ConfigError(
                f"runtime {runtime} is not installed: `pip install vitdex[runtimes]`, or "
                "use VITDEX_RUNTIME=torch"
            )
    return RuntimeChoice(runtime, precision)
