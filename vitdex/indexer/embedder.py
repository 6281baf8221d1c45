"""The ViT embedder: photos in, L2-normalised vectors per space (and logits) out.

One forward pass per batch yields every requested [CLS] or mean-pooled vector
(``output_hidden_states=True``) and, when the checkpoint has one, the classifier's logits.
The model loads lazily, once, under a lock; constructing an :class:`Embedder` is cheap.
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
from vitdex.devices import default_precision, resolve_device
from vitdex.errors import ConfigError, ModelLoadError, NoClassifierError
from vitdex.indexer.cores import model_threads
from vitdex.indexer.models import (
    folder_fingerprint,
    load_error,
    locate_checkpoint,
    normalize_model_id,
    quiet_progress,
)
from vitdex.indexer.preprocessing import Preprocessing, pixel_batch, read_preprocessing
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

_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}

Forward = Callable[[torch.Tensor], tuple[tuple[torch.Tensor, ...], torch.Tensor | None]]


@dataclass
class EmbedResult:
    """Vectors per space (float32 [n, dim], unit norm) and logits (float32 [n, labels])."""

    vectors: dict[str, np.ndarray]
    logits: np.ndarray | None


# --------------------------------------------------------------------------- hardware


def _resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return default_precision(device)
    if precision not in _DTYPES:
        raise ConfigError(f"invalid precision {precision!r}: use auto, fp32, bf16 or fp16")
    if device.type == "cpu" and precision != "fp32" and default_precision(device) != precision:
        log.warning("%s on this CPU is emulated and likely slower than fp32", precision)
    return precision


def _configure_threads() -> None:
    # torch sizes its pool from the host's cores; in a container with a CPU quota that
    # oversubscribes and every matmul waits on descheduled threads.
    budget = model_threads()
    if torch.get_num_threads() > budget:
        torch.set_num_threads(budget)


# --------------------------------------------------------------------------- embedder


def _wants_classifier(config: Any) -> bool:
    architectures = getattr(config, "architectures", None) or []
    if architectures:
        return any(str(a).endswith("ForImageClassification") for a in architectures)
    labels = getattr(config, "id2label", None) or {}
    return not (len(labels) == 2 and set(labels.values()) == {"LABEL_0", "LABEL_1"})


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
    ) -> None:
        """Check the arguments and pick device and precision; loads nothing.

        ``spaces`` are layer specs (:mod:`vitdex.indexer.spaces`); a relative depth
        (``cls@2/3``) resolves to its layer when the model loads. ``compile`` runs the
        model through ``torch.compile`` (about 10% faster on CPU after a 20-40 s compile);
        ``None`` reads VITDEX_COMPILE.
        """
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.model_id: str = normalize_model_id(model)
        self.revision = revision
        self.batch_size = batch_size
        self._given = parse_layer_specs(spaces)
        self.device: torch.device = resolve_device(device)
        self.precision: str = _resolve_precision(precision, self.device)
        self.dtype: torch.dtype = _DTYPES[self.precision]
        self.compile = compile

        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._loaded = False
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
        )

    def __repr__(self) -> str:
        state = "loaded" if self._loaded else "not loaded"
        return (
            f"Embedder({self.model_id!r}, spaces={self._given}, "
            f"device={self.device}, precision={self.precision}, {state})"
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

        backbone, head = self._load_modules(folder, config)
        if self.device.type == "cpu":
            _configure_threads()
        backbone.to(self.device).eval()
        if head is not None:
            head.to(self.device).eval()

        revision = checkpoint.revision or folder_fingerprint(folder)
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
        self._backbone, self._head = backbone, head
        self._layers = layers
        self._prep = prep
        self._num_layers = num_layers
        self._folder = folder
        self._id2label = (
            {int(k): str(v) for k, v in (config.id2label or {}).items()} if head is not None else {}
        )
        self.model_revision = revision
        forward: Forward = self._forward_eager
        if self.compile:
            # Freezing folds the weights into the graph so inductor can prepack them for
            # oneDNN; without it compiling ViT on CPU gains nothing.
            options: dict[str, Any] | None = (
                {"freezing": True} if self.device.type == "cpu" else None
            )
            forward = torch.compile(self._forward_eager, dynamic=False, options=options)
        self._forward = forward
        log.info(
            "loaded %s (revision %s) on %s in %s: %d layers, dim %d, classifier: %s",
            self.model_id,
            revision,
            self.device,
            self.precision,
            num_layers,
            dim,
            head is not None,
        )

    def _error(self, what: str) -> ModelLoadError:
        return load_error(self.model_id, what)

    def _load_modules(
        self, folder: Path, config: Any
    ) -> tuple[torch.nn.Module, torch.nn.Module | None]:
        import transformers

        # from_pretrained(output_loading_info=True) returns a tuple its stubs do not know.
        classifier_cls: Any = transformers.ViTForImageClassification
        backbone_cls: Any = transformers.ViTModel
        options: dict[str, Any] = {
            "dtype": self.dtype,
            "attn_implementation": "sdpa",
            "output_loading_info": True,
        }
        try:
            with quiet_progress():
                if _wants_classifier(config):
                    model, info = classifier_cls.from_pretrained(folder, **options)
                    missing = list(info.get("missing_keys", []))
                    if any(str(k).startswith("classifier.") for k in missing):
                        # A random head would give confident nonsense; use the backbone only.
                        log.warning("%s has no trained classifier weights; not classifying", folder)
                        backbone, head = model.vit, None
                    else:
                        backbone, head = model.vit, model.classifier
                    missing = [k for k in missing if not str(k).startswith("classifier.")]
                else:
                    backbone, info = backbone_cls.from_pretrained(
                        folder, add_pooling_layer=False, **options
                    )
                    head = None
                    missing = list(info.get("missing_keys", []))
        except ModelLoadError:
            raise
        except Exception as exc:
            raise self._error(
                f"the files in {folder} cannot be read ({type(exc).__name__}: {exc})"
            ) from exc
        if missing:
            shown = ", ".join(sorted(map(str, missing))[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise self._error(
                f"its weights lack {len(missing)} tensors of the ViT ({shown}{more}); "
                "the checkpoint is incomplete or not a ViT"
            )
        return backbone, head

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
        return self._head is not None

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
        out = self._backbone(pixel_values=pixels, output_hidden_states=True)
        last = out.last_hidden_state
        pooled = []
        for space in self._layers:
            states = last if space.layer is None else out.hidden_states[space.layer]
            if space.pooling == "cls":
                vector = states[:, 0].float()
            else:  # mean over the patch tokens; the [CLS] token is not a patch
                vector = states[:, 1:].float().mean(dim=1)
            pooled.append(torch.nn.functional.normalize(vector, dim=1))
        logits = self._head(last[:, 0]).float() if self._head is not None else None
        return tuple(pooled), logits

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
        if self._head is not None:
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
        if self._head is None:
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
