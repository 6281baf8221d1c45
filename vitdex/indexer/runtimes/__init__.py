"""Inference runtimes for the embedder: torch, ONNX Runtime and OpenVINO.

- :mod:`.choice`: runtimes, the precisions each runs, and the agreement bounds;
- :mod:`.modules`: the checkpoint's torch modules and the pooling every runtime shares;
- :mod:`.export`: exports under VITDEX_HOME (ONNX, int8, OpenVINO IR) with metadata;
- :mod:`.sessions`: ONNX Runtime / OpenVINO forwards;
- :mod:`.loader`: agreement with torch fp32 on the probe photos, and ``auto``'s choice.
"""

from vitdex.indexer.runtimes.choice import (
    FP_BOUND,
    INT8_BOUND,
    RUNTIMES,
    SUPPORTED,
    RuntimeChoice,
    bound_for,
    check_choice,
    installed,
)

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
