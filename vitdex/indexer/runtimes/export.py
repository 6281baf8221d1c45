"""Exported embedders under VITDEX_HOME: ONNX, its int8 quantization, OpenVINO IR.

One folder per model (id + revision) and set of spaces, one sub-folder per variant
(``onnx-fp32``, ``onnx-int8``, ``openvino-fp32``, ``openvino-int8``), each with an
``export.json`` beside the model. A variant is built in a temporary folder and renamed
into place, so two processes exporting at once each finish whole, and the loser of the
rename simply uses the winner's files. The folder also keeps the torch fp32 vectors of
the probe photos (``reference.npz``), against which every runtime's agreement is measured.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitdex.errors import ConfigError, ModelLoadError
from vitdex.indexer.runtimes.modules import EmbedModule, pooled_outputs
from vitdex.indexer.spaces import ResolvedSpace

__all__ = ["FORMATS", "Export", "Exporter", "variant_for"]

log = logging.getLogger(__name__)

#: Formats ``vitdex export-model`` writes, with the precisions stored for each.
FORMATS: dict[str, tuple[str, ...]] = {"onnx": ("fp32", "int8"), "openvino": ("fp32", "int8")}
_META = "export.json"
_REFERENCE = "reference.npz"

Modules = tuple[torch.nn.Module, torch.nn.Module | None]


def variant_for(runtime: str, precision: str) -> tuple[str, str]:
    """The stored (format, precision) a runtime runs: OpenVINO's bf16 is a compile-time
    hint on the fp32 IR, not a file of its own."""
    if runtime == "onnxruntime":
        return "onnx", precision
    if runtime == "openvino":
        return "openvino", "int8" if precision == "int8" else "fp32"
    raise ConfigError(f"runtime {runtime} runs the checkpoint itself, not an export")


@dataclass
class Export:
    """One exported variant on disk and its metadata."""

    folder: Path
    meta: dict[str, Any]

    @property
    def model_file(self) -> Path:
        """The file a runtime loads (``model.onnx`` or ``model.xml``)."""
        return self.folder / str(self.meta["file"])

    @property
    def output_names(self) -> list[str]:
        """Graph outputs: one per space in order, then ``logits`` when there is a head."""
        return [str(n) for n in self.meta["outputs"]]

    @property
    def has_logits(self) -> bool:
        """Whether the graph computes the classifier's logits."""
        return "logits" in self.output_names

    def record_agreement(self, label: str, figures: dict[str, Any]) -> None:
        """Cache a runtime's agreement in ``export.json`` (rewritten atomically)."""
        self.meta.setdefault("agreement", {})[label] = figures
        _write_json(self.folder / _META, self.meta)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    # The exporters print progress; stdout belongs to the command's (JSON) output.
    with contextlib.redirect_stdout(sys.stderr):
        yield


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    # ONNX Runtime's quantizer logs every tensor it skips on the root logger.
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


class Exporter:
    """Finds or writes the exports of one model and set of spaces under ``home``.

    ``modules`` loads the checkpoint's fp32 torch modules; it is called only when an
    export or the reference vectors must be made, and they are dropped afterwards.
    """

    def __init__(
        self,
        home: Path,
        *,
        model_id: str,
        revision: str,
        layers: Sequence[ResolvedSpace],
        preprocessing: dict[str, Any],
        input_size: tuple[int, int],
        dim: int,
        probe: Callable[[], torch.Tensor],
        modules: Callable[[], Modules],
    ) -> None:
        self.model_id = model_id
        self.revision = revision
        self.layers = list(layers)
        self.preprocessing = preprocessing
        self.input_size = input_size
        self.dim = dim
        self._probe = probe
        self._modules_fn = modules
        self._modules: Modules | None = None
        names = ",".join(f"{s.name}" for s in self.layers)
        digest = hashlib.sha256(f"{model_id}\0{revision}\0{names}".encode()).hexdigest()[:16]
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model_id).name or "model")[:40]
        self.root = Path(home) / "exports" / f"{stem}-{digest}"

    # ------------------------------------------------------------------ torch side

    def _torch(self) -> Modules:
        if self._modules is None:
            self._modules = self._modules_fn()
        return self._modules

    def release(self) -> None:
        """Drop the torch modules loaded for exporting (the runtimes do not need them)."""
        self._modules = None

    def reference(self) -> dict[str, np.ndarray]:
        """torch fp32 vectors of the probe photos per space (computed once, then read)."""
        path = self.root / _REFERENCE
        if path.is_file():
            with np.load(path) as data:
                return {s.name: np.asarray(data[s.name]) for s in self.layers}
        backbone, head = self._torch()
        with torch.inference_mode():
            vectors, _ = pooled_outputs(backbone, head, self.layers, self._probe().float())
        result = {
            s.name: v.numpy().astype(np.float32) for s, v in zip(self.layers, vectors, strict=True)
        }
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{_REFERENCE}.{os.getpid()}.{uuid.uuid4().hex[:8]}.npz"
        np.savez(tmp, **result)  # type: ignore[arg-type]
        tmp.replace(path)
        return result

    # ------------------------------------------------------------------ variants

    def find(self, fmt: str, precision: str) -> Export | None:
        """The variant when it is already exported, else ``None``."""
        folder = self.root / f"{fmt}-{precision}"
        try:
            meta = json.loads((folder / _META).read_text())
        except (OSError, ValueError):
            return None
        export = Export(folder, meta)
        return export if export.model_file.is_file() else None

    def ensure(self, fmt: str, precision: str) -> Export:
        """The variant, exported first when missing (logged with how long it took)."""
        if fmt not in FORMATS or precision not in FORMATS[fmt]:
            known = "; ".join(f"{f}: {', '.join(p)}" for f, p in FORMATS.items())
            raise ConfigError(f"cannot export {fmt} in {precision} (exports: {known})")
        found = self.find(fmt, precision)
        if found is not None:
            return found
        self.reference()  # before the export, so the figures compare with one reference
        source = None
        if fmt == "openvino" or precision == "int8":
            source = self.ensure("onnx", precision if fmt == "openvino" else "fp32")
        log.warning("exporting %s as %s %s (first use) ...", self.model_id, fmt, precision)
        t0 = time.perf_counter()
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{fmt}-{precision}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            file = self._write(fmt, precision, tmp, source)
            meta = self._meta(fmt, precision, file, tmp, source, time.perf_counter() - t0)
            _write_json(tmp / _META, meta)
            final = self.root / f"{fmt}-{precision}"
            try:
                tmp.rename(final)
            except OSError:
                # Another process finished the same export first: use its files.
                if self.find(fmt, precision) is None:
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        export = self.find(fmt, precision)
        if export is None:
            raise ModelLoadError(f"the {fmt} {precision} export in {self.root} cannot be read")
        log.warning(
            "exported %s as %s %s to %s in %.1f s",
            self.model_id,
            fmt,
            precision,
            export.folder,
            time.perf_counter() - t0,
        )
        return export

    def _write(self, fmt: str, precision: str, folder: Path, source: Export | None) -> str:
        if fmt == "onnx" and precision == "fp32":
            self._export_onnx(folder / "model.onnx")
            return "model.onnx"
        assert source is not None
        if fmt == "onnx":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # The quantizer writes a shape-inferred copy beside its input
            # (NAME-inferred.onnx) and deletes it after; two processes quantizing the
            # same source would race on that file, so each quantizes its own link of
            # the source inside its private temporary folder.
            own = folder / "source.onnx"
            try:
                os.link(source.model_file, own)
            except OSError:
                shutil.copyfile(source.model_file, own)
            # Dynamic quantization: int8 weights per output channel, activations
            # quantized per batch at run time, so no calibration photos are needed.
            try:
                with _quiet_root_logger():
                    quantize_dynamic(
                        own,
                        folder / "model.onnx",
                        weight_type=QuantType.QInt8,
                        per_channel=True,
                    )
            finally:
                own.unlink(missing_ok=True)
            return "model.onnx"
        import openvino as ov

        # OpenVINO reads the (quantized) ONNX graph; fp32 weights stay fp32 (its default
        # would halve them to fp16 and cost agreement).
        with _quiet_stdout():
            model = ov.convert_model(str(source.model_file))
            ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)
        return "model.xml"

    def _export_onnx(self, path: Path) -> None:
        backbone, head = self._torch()
        module = EmbedModule(backbone, head, self.layers).eval()
        height, width = self.input_size
        example = torch.zeros((2, 3, height, width), dtype=torch.float32)
        outputs = [f"space_{i}" for i in range(len(self.layers))]
        if head is not None:
            outputs.append("logits")
        batch = torch.export.Dim("batch", min=1, max=4096)
        try:
            with _quiet_stdout(), torch.inference_mode():
                torch.onnx.export(
                    module,
                    (example,),
                    str(path),
                    dynamo=True,
                    input_names=["pixel_values"],
                    output_names=outputs,
                    dynamic_shapes={"pixel_values": {0: batch}},
                    external_data=False,
                    optimize=True,
                    verbose=False,
                )
        except Exception as exc:
            raise ModelLoadError(
                f"exporting {self.model_id} to ONNX failed ({type(exc).__name__}: {exc})"
            ) from exc

    def _meta(
        self,
        fmt: str,
        precision: str,
        file: str,
        folder: Path,
        source: Export | None,
        seconds: float,
    ) -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        if source is None:  # the fp32 ONNX export, made from the torch modules
            has_logits = self._torch()[1] is not None
        else:
            has_logits = source.has_logits
        outputs = [f"space_{i}" for i in range(len(self.layers))]
        if has_logits:
            outputs.append("logits")
        versions: dict[str, str] = {"torch": torch.__version__}
        for package in ("onnx", "onnxruntime", "openvino"):
            with contextlib.suppress(PackageNotFoundError):
                versions[package] = version(package)
        return {
            "model_id": self.model_id,
            "revision": self.revision,
            "format": fmt,
            "precision": precision,
            "file": file,
            "input": "pixel_values",
            "input_size": list(self.input_size),
            "outputs": outputs,
            "spaces": [
                {"name": s.name, "spec": s.spec, "pooling": s.pooling, "layer": s.layer}
                for s in self.layers
            ],
            "dims": {s.name: self.dim for s in self.layers},
            "preprocessing": self.preprocessing,
            "versions": versions,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "export_seconds": round(seconds, 2),
            "files": {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()},
            "reference": _REFERENCE,
            "agreement": {},
        }
