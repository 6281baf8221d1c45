"""Loading one checkpoint for a runtime: exports, forwards, agreement, the auto choice.

:class:`RuntimeLoader` holds what the embedder read from the checkpoint folder (config,
spaces, preprocessing) and makes the rest on demand: torch modules only to export or to
run torch, exports under VITDEX_HOME, and each runtime's agreement with torch fp32 on the
probe photos (measured once and cached beside the export).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitdex.devices import cpu_flags, default_precision
from vitdex.errors import ConfigError, ModelLoadError
from vitdex.indexer.preprocessing import Preprocessing, pixel_batch
from vitdex.indexer.runtimes.choice import (
    RUNTIMES,
    SUPPORTED,
    RuntimeChoice,
    check_choice,
    installed,
)
from vitdex.indexer.runtimes.export import Exporter, Modules, variant_for
from vitdex.indexer.runtimes.modules import load_vit_modules, pooled_outputs
from vitdex.indexer.runtimes.probe import agreement, probe_images
from vitdex.indexer.runtimes.sessions import Forward, open_forward
from vitdex.indexer.spaces import ResolvedSpace

__all__ = ["DTYPES", "RuntimeLoader", "default_precision_for", "resolve_precision"]

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
Embed = Callable[[torch.Tensor], dict[str, np.ndarray]]


def default_precision_for(runtime: str, device: torch.device) -> str:
    """What ``auto`` precision means for a runtime: torch's device default, fp32 for ONNX
    Runtime, bf16 for OpenVINO where the CPU computes bf16 natively (else fp32)."""
    if runtime == "torch":
        return default_precision(device)
    if runtime == "openvino" and default_precision(device) == "bf16":
        return "bf16"
    return "fp32"


def resolve_precision(precision: str, device: torch.device, runtime: str) -> str:
    """The concrete precision ``runtime`` runs for a requested one (``auto`` included),
    or a ConfigError; with runtime ``auto`` the request stays as given until the choice."""
    if runtime == "auto":
        if precision not in ("auto", *DTYPES, "int8"):
            raise ConfigError(
                f"invalid precision {precision!r}: use auto, fp32, bf16, fp16 or int8"
            )
        return precision  # each candidate runtime resolves auto its own way at load
    if precision == "auto":
        precision = default_precision_for(runtime, device)
    check_choice(runtime, precision, device.type)
    if (
        runtime == "torch"
        and device.type == "cpu"
        and precision != "fp32"
        and default_precision(device) != precision
    ):
        log.warning("%s on this CPU is emulated and likely slower than fp32", precision)
    return precision


def _atomic_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class RuntimeLoader:
    """Exports, forwards and agreement figures for one checkpoint and set of spaces."""

    def __init__(
        self,
        *,
        home: Path,
        model_id: str,
        revision: str,
        layers: list[ResolvedSpace],
        prep: Preprocessing,
        folder: Path,
        config: Any,
        device: torch.device,
        error: Callable[[str], ModelLoadError],
    ) -> None:
        self.home = Path(home)
        self.layers = layers
        self.prep = prep
        self.folder = folder
        self.config = config
        self.device = device
        self.error = error
        self.exporter = Exporter(
            self.home,
            model_id=model_id,
            revision=revision,
            layers=layers,
            preprocessing=prep.to_record(),
            input_size=prep.input_size,
            dim=int(config.hidden_size),
            probe=self.probe_pixels,
            modules=lambda: self.torch_modules(torch.float32),
        )

    def probe_pixels(self) -> torch.Tensor:
        """The probe photos as this checkpoint's float32 pixel batch."""
        return pixel_batch(probe_images(), self.prep)

    def torch_modules(self, dtype: torch.dtype) -> Modules:
        """The checkpoint's backbone and head in ``dtype`` (loaded from disk each call)."""
        return load_vit_modules(self.folder, self.config, dtype, self.error)

    def open(self, choice: RuntimeChoice) -> tuple[Forward, bool]:
        """A forward for an export runtime (exported first when missing) and whether it
        has logits; the torch modules used to export are released afterwards."""
        fmt, stored = variant_for(choice.runtime, choice.precision)
        try:
            export = self.exporter.ensure(fmt, stored)
        finally:
            self.exporter.release()
        return open_forward(export, choice.runtime, choice.precision), export.has_logits

    # ------------------------------------------------------------------ agreement

    def _torch_cache(self) -> Path:
        return self.exporter.root / "agreement-torch.json"

    def cached_agreement(self, choice: RuntimeChoice) -> dict[str, Any] | None:
        """The figures measured earlier for ``choice``, if any."""
        if choice.runtime == "torch":
            found = _read_json(self._torch_cache()).get(choice.label)
        else:
            export = self.exporter.find(*variant_for(choice.runtime, choice.precision))
            found = export.meta.get("agreement", {}).get(choice.label) if export else None
        return found if isinstance(found, dict) else None

    def agreement(self, choice: RuntimeChoice, embed: Embed) -> dict[str, Any]:
        """``choice``'s least cosine per space to torch fp32 on the probe photos, with its
        bound; measured with ``embed`` once, then read from the cache."""
        if choice.label == "torch-fp32":
            # The reference itself: same code, same dtype, same kernels.
            per_space = {s.name: 1.0 for s in self.layers}
            return {"per_space": per_space, "min": 1.0, "bound": choice.bound}
        cached = self.cached_agreement(choice)
        if cached is not None:
            return cached
        try:
            reference = self.exporter.reference()
        finally:
            self.exporter.release()
        per_space = agreement(reference, embed(self.probe_pixels()))
        figures = {
            "per_space": per_space,
            "min": min(per_space.values()),
            "bound": choice.bound,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if choice.runtime == "torch":
            cache = _read_json(self._torch_cache())
            cache[choice.label] = figures
            _atomic_json(self._torch_cache(), cache)
        else:
            export = self.exporter.find(*variant_for(choice.runtime, choice.precision))
            if export is not None:
                export.record_agreement(choice.label, figures)
        log.info("agreement of %s with torch fp32: %s", choice.label, per_space)
        return figures

    # ------------------------------------------------------------------ auto

    def candidates(self, precision: str) -> list[RuntimeChoice]:
        """Installed runtimes that run ``precision`` (``auto``: each its default)."""
        found = []
        for runtime in RUNTIMES:
            if not installed(runtime):
                continue
            wanted = (
                default_precision_for(runtime, self.device) if precision == "auto" else precision
            )
            if wanted in SUPPORTED[runtime]:
                found.append(RuntimeChoice(runtime, wanted))
        if not found:
            raise ConfigError(f"no installed runtime runs precision {precision}")
        return found

    def _torch_embed(self, dtype: torch.dtype) -> Embed:
        backbone, _ = self.torch_modules(dtype)
        backbone.eval()

        def embed(pixels: torch.Tensor) -> dict[str, np.ndarray]:
            with torch.inference_mode():
                vectors, _ = pooled_outputs(backbone, None, self.layers, pixels.to(dtype))
            return {s.name: v.numpy() for s, v in zip(self.layers, vectors, strict=True)}

        return embed

    def _embed_of(self, choice: RuntimeChoice) -> Embed:
        if choice.runtime == "torch":
            return self._torch_embed(DTYPES[choice.precision])
        forward, _ = self.open(choice)

        def embed(pixels: torch.Tensor) -> dict[str, np.ndarray]:
            vectors, _ = forward(pixels)
            return {s.name: v.numpy() for s, v in zip(self.layers, vectors, strict=True)}

        return embed

    def pick(self, precision: str, batch_size: int) -> RuntimeChoice:
        """The fastest installed runtime for this model on this CPU, among those that meet
        their bound: measured once (a few timed batches each, exports made first), then
        read from VITDEX_HOME as long as the CPU's flags are the same."""
        cache_file = self.home / "runtimes" / "auto.json"
        flags = hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:16]
        key = f"{self.exporter.root.name}|{self.device.type}|{precision}"
        cached = _read_json(cache_file).get(key)
        if isinstance(cached, dict) and cached.get("cpu") == flags:
            runtime, _, chosen = str(cached["choice"]).partition("-")
            log.info("runtime auto: %s (measured %s)", cached["choice"], cached.get("img_per_s"))
            return RuntimeChoice(runtime, chosen)
        batch = pixel_batch(probe_images() * 2, self.prep)[: max(1, min(batch_size, 16))]
        speeds: dict[str, float] = {}
        for choice in self.candidates(precision):
            try:
                embed = self._embed_of(choice)
                figures = self.agreement(choice, embed)
            except (ModelLoadError, ImportError) as exc:
                log.warning("runtime auto: %s left out: %s", choice.label, exc)
                continue
            if figures["min"] < choice.bound:
                log.warning("runtime auto: %s left out: agreement %s", choice.label, figures["min"])
                continue
            embed(batch)  # warm-up: first runs allocate and pick kernels
            runs, t0 = 0, time.perf_counter()
            while runs < 3 and (runs < 1 or time.perf_counter() - t0 < 2.0):
                embed(batch)
                runs += 1
            speeds[choice.label] = round(runs * len(batch) / (time.perf_counter() - t0), 2)
        if not speeds:
            raise ConfigError("runtime auto: no installed runtime meets its agreement bound")
        best = max(speeds, key=lambda label: speeds[label])
        log.warning("runtime auto picked %s (images/s at batch %d: %s)", best, len(batch), speeds)
        cache = _read_json(cache_file)
        cache[key] = {"cpu": flags, "choice": best, "img_per_s": speeds, "batch": len(batch)}
        _atomic_json(cache_file, cache)
        runtime, _, chosen = best.partition("-")
        return RuntimeChoice(runtime, chosen)
