"""The ViT embedder: photos in, L2-normalised vectors per space (and logits) out.

One forward pass per batch yields every requested [CLS] or mean-pooled vector
(``output_hidden_states=True``) and, when the checkpoint has one, the classifier's logits.
The model loads lazily, once, under a lock; constructing an :class:`Embedder` is cheap.
It runs on torch or, on a CPU, on an export run by ONNX Runtime or OpenVINO
(:mod:`vitdex.indexer.runtimes`); either way its vectors carry an agreement figure with
torch fp32, which the spaces it writes into check.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from vitdex.config import DEFAULT_SPACES, parse_layer_specs
from vitdex.devices import resolve_device
from vitdex.errors import ConfigError, ModelLoadError, NoClassifierError
from vitdex.indexer.cores import model_threads
from vitdex.indexer.models import (
    folder_fingerprint,
    load_error,
    locate_checkpoint,
    normalize_model_id,
)
from vitdex.indexer.preprocessing import Preprocessing, pixel_batch, read_preprocessing
from vitdex.indexer.runtimes.choice import RUNTIMES, RuntimeChoice
from vitdex.indexer.runtimes.export import Export, variant_for
from vitdex.indexer.runtimes.loader import DTYPES, RuntimeLoader, resolve_precision
from vitdex.indexer.runtimes.modules import load_vit_modules, pooled_outputs
from vitdex.indexer.spaces import (
    ResolvedSpace,
    SpaceSpec,
    configured_spaces,
    resolve_spaces,
)

if TYPE_CHECKING:
    from vitdex.config import ModelSettings

__all__ = ["EmbedResult", "Embedder"]

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], tuple[tuple[torch.Tensor, ...], torch.Tensor | None]]


@dataclass
class EmbedResult:
    """Vectors per space (float32 [n, dim], unit norm) and logits (float32 [n, labels])."""

    vectors: dict[str, np.ndarray]
    logits: np.ndarray | None


# --------------------------------------------------------------------------- hardware


def _vitdex_home() -> Path:
    from vitdex.config import StorageSettings

    return StorageSettings().home


def _configure_threads() -> None:
    # torch sizes its pool from the host's cores; in a container with a CPU quota that
    # oversubscribes and every matmul waits on descheduled threads.
    budget = model_threads()
    if torch.get_num_threads() > budget:
        torch.set_num_threads(budget)


# --------------------------------------------------------------------------- embedder


class Embedder:
    """Embeds RGB photos with a Hugging Face ViT checkpoint (hub id or local folder).

    Construction only checks arguments; the model loads on first use (or :meth:`load`),
    once, even when several threads ask at the same time.
    """

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        spaces: Sequence[str] = DEFAULT_SPACES,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 16,
        compile: bool = False,
        runtime: str = "torch",
        home: Path | None = None,
    ) -> None:
        """Check the arguments and pick device, runtime and precision; loads nothing.

        ``spaces`` are layer specs (:mod:`vitdex.indexer.spaces`); a relative depth
        (``cls@2/3``) resolves to its layer when the model loads. ``compile`` runs the
        model through ``torch.compile`` (about 10% faster on CPU after a 20-40 s compile).
        ``runtime`` is torch, onnxruntime, openvino or auto (the fastest one measured on
        this machine; torch on a GPU); exports and measurements live under ``home``
        (default VITDEX_HOME). A runtime/precision pair it cannot run is a ConfigError.
        """
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.model_id: str = normalize_model_id(model)
        self.revision = revision
        self.batch_size = batch_size
        self._given = parse_layer_specs(spaces)
        self.device: torch.device = resolve_device(device)
        if runtime == "auto" and self.device.type != "cpu":
            runtime = "torch"  # the exports run on the CPU; a GPU runs torch
        if runtime not in ("auto", *RUNTIMES):
            raise ConfigError(f"invalid runtime {runtime!r}: use auto, {', '.join(RUNTIMES)}")
        self.runtime: str = runtime
        self.precision: str = resolve_precision(precision, self.device, runtime)
        self.dtype: torch.dtype = DTYPES.get(self.precision, torch.float32)
        self.compile = compile
        #: Where exports and measurements live; None: VITDEX_HOME (set before loading).
        self.home = home
        self._loader: RuntimeLoader | None = None
        self._agreement: dict[str, Any] | None = None
        self._has_head = False

        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._loaded = False
        self._warm = False
        self._backbone: torch.nn.Module | None = None
        self._head: torch.nn.Module | None = None
        self._forward: Forward | None = None
        self._prep: Preprocessing | None = None
        self._specs: list[SpaceSpec] = []
        self._layers: list[ResolvedSpace] = []
        self._id2label: dict[int, str] = {}
        self._num_layers = 0
        self._folder: Path | None = None
        self.model_revision: str | None = None

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> Embedder:
        """An embedder configured from :class:`vitdex.config.ModelSettings`."""
        return cls(
            settings.model,
            revision=settings.model_revision,
            spaces=settings.spaces,
            device=settings.device,
            precision=settings.precision,
            batch_size=settings.batch_size,
            compile=settings.compile,
            runtime=settings.runtime,
        )

    def __repr__(self) -> str:
        state = "loaded" if self._loaded else "not loaded"
        return (
            f"Embedder({self.model_id!r}, spaces={self._given}, "
            f"device={self.device}, runtime={self.runtime}, precision={self.precision}, "
            f"{state})"
        )

    # ------------------------------------------------------------------ loading

    @property
    def loaded(self) -> bool:
        """Whether the model has been loaded."""
        return self._loaded

    def load(self) -> None:
        """Load the checkpoint (once; later calls return at once).

        Raises :class:`ModelLoadError` when the model cannot be found or read and
        :class:`ConfigError` when a layer spec does not fit the model.
        """
        if self._loaded:
            return
        with self._load_lock:
            if not self._loaded:
                self._load()
                self._loaded = True

    def _load(self) -> None:
        from transformers import ViTConfig

        checkpoint = locate_checkpoint(self.model_id, self.revision)
        folder = checkpoint.folder
        try:
            config = ViTConfig.from_pretrained(folder)
        except Exception as exc:
            raise self._error(f"its config.json in {folder} cannot be read: {exc}") from exc
        model_type = getattr(config, "model_type", None)
        if model_type != "vit":
            raise self._error(f"it is a {model_type!r} model, not a ViT (model_type 'vit')")

        num_layers = int(config.num_hidden_layers)
        layers = resolve_spaces(self._given, num_layers)

        image_size = config.image_size
        side = image_size if isinstance(image_size, int) else int(image_size[0])
        try:
            prep = read_preprocessing(folder, side)
        except (ValueError, TypeError, KeyError) as exc:
            raise self._error(f"its preprocessor_config.json cannot be used: {exc}") from exc
        expected = (
            (image_size, image_size) if isinstance(image_size, int) else tuple(image_size[:2])
        )
        if prep.input_size != expected:
            raise self._error(
                f"its preprocessor makes {prep.input_size[0]}x{prep.input_size[1]} inputs but "
                f"the model takes {expected[0]}x{expected[1]}"
            )

        revision = checkpoint.revision or folder_fingerprint(folder)
        loader = RuntimeLoader(
            home=self.home if self.home is not None else _vitdex_home(),
            model_id=self.model_id,
            revision=revision,
            layers=layers,
            prep=prep,
            folder=folder,
            config=config,
            device=self.device,
            error=self._error,
        )
        if self.runtime == "auto":
            picked = loader.pick(self.precision, self.batch_size)
            self.runtime, self.precision = picked.runtime, picked.precision
            self.dtype = DTYPES.get(self.precision, torch.float32)
        self._layers = layers
        if self.runtime == "torch":
            backbone, head = load_vit_modules(folder, config, self.dtype, self._error)
            if self.device.type == "cpu":
                _configure_threads()
            backbone.to(self.device).eval()
            if head is not None:
                head.to(self.device).eval()
            self._backbone, self._head = backbone, head
            self._has_head = head is not None
            forward: Forward = self._forward_eager
            if self.compile:
                # Freezing folds the weights into the graph so inductor can prepack them
                # for oneDNN; without it compiling ViT on CPU gains nothing.
                options: dict[str, Any] | None = (
                    {"freezing": True} if self.device.type == "cpu" else None
                )
                forward = torch.compile(self._forward_eager, dynamic=False, options=options)
        else:
            if self.compile:
                log.warning("VITDEX_COMPILE is for the torch runtime; %s ignores it", self.runtime)
                self.compile = False
            # No torch weights stay in memory: the export runs on its own.
            forward, self._has_head = loader.open(self.choice)
        self._forward = forward
        self._loader = loader

        record = prep.to_record()
        dim = int(config.hidden_size)
        self._specs = [
            SpaceSpec(
                name=space.name,
                layer=space.name,
                model_id=self.model_id,
                model_revision=revision,
                preprocessing=dict(record),
                dim=dim,
            )
            for space in layers
        ]
        self._prep = prep
        self._num_layers = num_layers
        self._folder = folder
        self._id2label = (
            {int(k): str(v) for k, v in (config.id2label or {}).items()} if self._has_head else {}
        )
        self.model_revision = revision
        if self.runtime != "torch":
            # An export is checked at once (cached after the first time): it is refused
            # here when its vectors stray from torch fp32 beyond its bound.
            self._check_bound(self._measure())
        log.info(
            "loaded %s (revision %s) on %s with %s: %d layers, dim %d, classifier: %s",
            self.model_id,
            revision,
            self.device,
            self.choice.label,
            num_layers,
            dim,
            self._has_head,
        )

    def _error(self, what: str) -> ModelLoadError:
        return load_error(self.model_id, what)

    # ------------------------------------------------------------------ runtime

    @property
    def choice(self) -> RuntimeChoice:
        """The runtime and precision that run (``auto`` resolves when the model loads)."""
        return RuntimeChoice(self.runtime, self.precision)

    @property
    def runtime_label(self) -> str:
        """``torch-bf16``, ``onnxruntime-int8``...: how spaces and reports name it."""
        return self.choice.label

    @property
    def agreement(self) -> dict[str, Any]:
        """Least cosine per space to torch fp32 on the probe photos ({"per_space", "min",
        "bound"}); measured once per model and runtime, then read from VITDEX_HOME."""
        self.load()
        return self._measure()

    def _measure(self) -> dict[str, Any]:
        if self._agreement is None:
            assert self._loader is not None
            step = self.batch_size

            def embed(pixels: torch.Tensor) -> dict[str, np.ndarray]:
                chunks = range(0, pixels.shape[0], step)
                return self._collect(self._run(pixels[i : i + step]) for i in chunks).vectors

            self._agreement = self._loader.agreement(self.choice, embed)
        return self._agreement

    def export(self) -> Export | None:
        """The export this embedder runs, with its metadata (``None`` on torch)."""
        self.load()
        if self.runtime == "torch" or self._loader is None:
            return None
        return self._loader.exporter.find(*variant_for(self.runtime, self.precision))

    def _check_bound(self, figures: dict[str, Any]) -> None:
        if figures["min"] < self.choice.bound:
            raise ModelLoadError(
                f"runtime {self.runtime_label} strays too far from torch fp32 for "
                f"{self.model_id}: least cosine {figures['min']:.6f} on the probe photos "
                f"(per space: {figures['per_space']}) is below its bound "
                f"{self.choice.bound}. Use a higher precision or another VITDEX_RUNTIME."
            )

    # ------------------------------------------------------------------ facts

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the model's input, from its preprocessor config."""
        self.load()
        assert self._prep is not None
        return self._prep.input_size

    @property
    def has_classifier(self) -> bool:
        """Whether the checkpoint has a trained classification head (logits are available)."""
        self.load()
        return self._has_head

    @property
    def id2label(self) -> dict[int, str]:
        """Class index to label name; empty without a classifier."""
        self.load()
        return dict(self._id2label)

    @property
    def num_layers(self) -> int:
        """Number of transformer layers (hidden states run 0..num_layers)."""
        self.load()
        return self._num_layers

    @property
    def spaces(self) -> list[str]:
        """The layer specs this embedder was asked for, as given (each once, in order)."""
        return list(self._given)

    def space_specs(self) -> list[SpaceSpec]:
        """One :class:`SpaceSpec` per space, in the order of the layer specs; each named
        by its resolved spec (``cls@2/3`` fills ``cls@8`` on a 12-layer ViT)."""
        self.load()
        return list(self._specs)

    def known_spaces(self) -> list[ResolvedSpace] | None:
        """The spaces this embedder fills, without loading the model when it is not loaded
        yet (resolved from the checkpoint's config.json on this machine); ``None`` when that
        file is not here, so only loading (or downloading) the model can tell.

        Raises :class:`ConfigError` when a layer spec does not fit the model.
        """
        if self._loaded:
            return list(self._layers)
        return configured_spaces(self.model_id, self.revision, self._given)

    # ------------------------------------------------------------------ pixels

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """RGB PIL images of any size to one normalised float32 batch [n, 3, H, W].

        Each image is resized with PIL as the checkpoint's preprocessor config says; the
        rescale and normalisation then run once over the whole batch.
        """
        self.load()
        assert self._prep is not None
        return pixel_batch(images, self._prep)

    # ------------------------------------------------------------------ model

    def _forward_eager(
        self, pixels: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
        assert self._backbone is not None
        return pooled_outputs(self._backbone, self._head, self._layers, pixels)

    def warm_up(self) -> None:
        """Run one full batch of zeros through the model, once per embedder.

        oneDNN, ONNX Runtime and OpenVINO build their kernels for a batch shape on its
        first call (about 2 s for ViT-B/16 on a CPU, and the next one or two calls are
        still slow); an indexer warms up before its first batch so that cost is not
        counted as, or mixed into, the photos' throughput.
        """
        self.load()
        if self._warm:
            return
        assert self._prep is not None
        height, width = self._prep.input_size
        zeros = torch.zeros((self.batch_size, 3, height, width))
        for _ in range(2):
            self._run(zeros)
        self._warm = True

    def _run(self, pixels: torch.Tensor) -> tuple[list[np.ndarray], np.ndarray | None]:
        assert self._forward is not None
        count = pixels.shape[0]
        if self.compile and count < self.batch_size:
            # A compiled graph is specialised to its batch size; pad rather than recompile.
            pad = pixels.new_zeros((self.batch_size - count, *pixels.shape[1:]))
            pixels = torch.cat([pixels, pad])
        # One forward at a time: concurrent callers would only fight over the same cores.
        with self._run_lock, torch.inference_mode():
            x = pixels.to(self.device, self.dtype, non_blocking=True)
            vectors, logits = self._forward(x)
            arrays = [v[:count].cpu().numpy() for v in vectors]
            logit_array = logits[:count].cpu().numpy() if logits is not None else None
        return arrays, logit_array

    def embed(self, images: Sequence[Image.Image]) -> EmbedResult:
        """Embed RGB photos in chunks of ``batch_size``; vectors are unit-norm float32."""
        self.load()
        step = self.batch_size
        return self._collect(
            self._run(self.preprocess(images[start : start + step]))
            for start in range(0, len(images), step)
        )

    def embed_pixels(self, pixels: torch.Tensor) -> EmbedResult:
        """Embed a batch that is already preprocessed (as :meth:`preprocess` returns it)."""
        self.load()
        step = self.batch_size
        return self._collect(
            self._run(pixels[start : start + step]) for start in range(0, pixels.shape[0], step)
        )

    def _collect(self, chunks: Iterable[tuple[list[np.ndarray], np.ndarray | None]]) -> EmbedResult:
        names = [space.name for space in self._layers]
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        logit_parts: list[np.ndarray] = []
        for vectors, logits in chunks:
            for name, array in zip(names, vectors, strict=True):
                parts[name].append(array)
            if logits is not None:
                logit_parts.append(logits)
        dim = self._specs[0].dim
        result = {
            name: (
                np.ascontiguousarray(np.concatenate(arrays), dtype=np.float32)
                if arrays
                else np.zeros((0, dim), dtype=np.float32)
            )
            for name, arrays in parts.items()
        }
        logits_out: np.ndarray | None = None
        if self._has_head:
            logits_out = (
                np.ascontiguousarray(np.concatenate(logit_parts), dtype=np.float32)
                if logit_parts
                else np.zeros((0, len(self._id2label)), dtype=np.float32)
            )
        return EmbedResult(vectors=result, logits=logits_out)

    def top_labels(self, logits: np.ndarray, k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable labels per row of ``logits``, as (label, probability).

        Probabilities are the softmax over all labels, best first.
        """
        self.load()
        if not self._has_head:
            raise NoClassifierError(
                f"model {self.model_id!r} has no classification head, so it has no labels"
            )
        scores = np.asarray(logits, dtype=np.float64)
        if scores.ndim == 1:
            scores = scores[None, :]
        scores = scores - scores.max(axis=1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=1, keepdims=True)
        k = max(0, min(int(k), probs.shape[1]))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        names = self._id2label
        return [
            [(names.get(int(j), str(int(j))), float(row[j])) for j in picks]
            for row, picks in zip(probs, order, strict=True)
        ]
