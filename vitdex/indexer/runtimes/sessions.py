"""Running an export: ONNX Runtime and OpenVINO sessions behind the embedder's forward.

A forward takes the preprocessed float32 batch (a torch tensor, as the torch path does)
and returns the vectors per space and the logits as tensors, so the embedder treats every
runtime alike. Both size their thread pools from :func:`vitdex.indexer.cores.model_threads`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from vitdex.errors import ModelLoadError
from vitdex.indexer.cores import model_threads
from vitdex.indexer.runtimes.export import Export

__all__ = ["Forward", "open_forward"]

Forward = Callable[[torch.Tensor], tuple[tuple[torch.Tensor, ...], torch.Tensor | None]]

#: OpenVINO's names for our precisions (INFERENCE_PRECISION_HINT). int8 graphs run their
#: remaining float ops in f32: on a CPU with bf16 the plugin would otherwise pick bf16.
_OV_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def _split(
    export: Export, arrays: list[np.ndarray]
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
    tensors = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in arrays]
    if export.has_logits:
        return tuple(tensors[:-1]), tensors[-1]
    return tuple(tensors), None


def _onnxruntime(export: Export) -> Forward:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = model_threads()
    # One batch at a time; parallelism is inside each op.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(export.model_file), options, providers=["CPUExecutionProvider"]
    )
    names = export.output_names

    def forward(pixels: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
        feed = {"pixel_values": pixels.detach().cpu().float().numpy()}
        return _split(export, list(session.run(names, feed)))

    return forward


def _openvino(export: Export, precision: str) -> Forward:
    import openvino as ov

    core = ov.Core()
    config: dict[str, Any] = {
        "INFERENCE_NUM_THREADS": model_threads(),
        "INFERENCE_PRECISION_HINT": _OV_HINTS[precision],
        "PERFORMANCE_HINT": "LATENCY",
        # Compiling ViT-B takes seconds; the compiled blob is cached beside the export.
        "CACHE_DIR": str(export.folder / "ov-cache"),
    }
    compiled = core.compile_model(core.read_model(str(export.model_file)), "CPU", config)
    request = compiled.create_infer_request()
    outputs = [compiled.output(name) for name in export.output_names]

    def forward(pixels: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
        result = request.infer({"pixel_values": pixels.detach().cpu().float().numpy()})
        # Copies: the request reuses its output buffers on the next call.
        return _split(export, [np.array(result[o]) for o in outputs])

    return forward


def open_forward(export: Export, runtime: str, precision: str) -> Forward:
    """A forward running ``export`` with ``runtime`` in ``precision`` on the CPU."""
    try:
        if runtime == "onnxruntime":
            return _onnxruntime(export)
        return _openvino(export, precision)
    except Exception as exc:
        raise ModelLoadError(
            f"{runtime} cannot load the export {export.model_file} "
            f"({type(exc).__name__}: {exc}); delete {export.folder} to export it again"
        ) from exc
