"""Validating a written single-file checkpoint against its diffusers source.

:func:`validate_checkpoint` reads the file back one component at a time with diffusers'
single-file readers (offline, configs from the source folder), compares every tensor with
the source's and renders the same fixed-seed sample with the source and with the file,
one pipeline after the other. :func:`load_single_file` loads the whole pipeline at once,
as a user's ``from_single_file`` would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitdex.errors import VitdexError
from vitdex.training.convert.keymaps import (
    SD1_TEXT_PREFIX,
    SD2_TEXT_PREFIX,
    SDXL_TEXT2_PREFIX,
    SDXL_TEXT_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
)
from vitdex.training.convert.source import (
    check_version,
    read_json,
    read_safetensors,
    safetensors_index,
)
from vitdex.training.quiet import quiet_hub

__all__ = [
    "CheckpointValidationError",
    "ValidationReport",
    "load_single_file",
    "load_source",
    "render",
    "validate_checkpoint",
    "validation_size",
]

#: Prompt, seed and steps of the sample both pipelines render during validation.
VALIDATION_PROMPT = "a photo of sks dog"
VALIDATION_SEED = 0
VALIDATION_STEPS = 2
#: Largest difference (images in [0, 1]) between the two renders that still counts as equal.
SAMPLE_ATOL = 1e-4


class CheckpointValidationError(VitdexError):
    """A written single-file checkpoint does not load back equal to its source."""

    http_status = 422
    exit_code = 1


@dataclass
class ValidationReport:
    """The outcome of :func:`validate_checkpoint`."""

    #: Tensors compared per component (``unet``, ``vae``, ``text_encoder``...).
    tensors: dict[str, int]
    #: Largest absolute pixel difference between the two fixed-seed renders.
    sample_max_diff: float
    #: The pipeline loaded from the single file (for rendering more samples).
    pipeline: Any = field(repr=False)


def _pipeline_class(version: str) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if version == "sdxl" else StableDiffusionPipeline


_COMPONENTS = {
    "sd15": ("unet", "vae", "text_encoder"),
    "sd21-base": ("unet", "vae", "text_encoder"),
    "sd21": ("unet", "vae", "text_encoder"),
    "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2"),
}


def load_single_file(path: Path, source: Path, version: str) -> Any:
    """The pipeline in single file ``path`` via diffusers' ``from_single_file``, offline, with
    the component configs (and tokenizers, scheduler) of the diffusers folder ``source``."""
    import torch

    with quiet_hub():
        pipe = _pipeline_class(version).from_single_file(
            str(path),
            config=str(source),
            local_files_only=True,
            dtype=torch.float32,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_source(source: Path, version: str, *, half: bool = False, device: str = "cpu") -> Any:
    """The diffusers pipeline in ``source`` in fp32; with ``half``, its weights are rounded
    through fp16 first (what a half-precision file holds)."""
    import torch

    kwargs: dict[str, Any] = {"dtype": torch.float32, "local_files_only": True}
    if version != "sdxl":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    with quiet_hub():
        pipe = _pipeline_class(version).from_pretrained(str(source), **kwargs)
    if half:
        with torch.no_grad():
            for name in _COMPONENTS[version]:
                for tensor in getattr(pipe, name).state_dict().values():
                    if tensor.is_floating_point():
                        tensor.copy_(tensor.half().float())
    pipe.set_progress_bar_config(disable=True)
    return pipe if device == "cpu" else pipe.to(device)


def _text_class(source: Path, name: str) -> Any:
    """The transformers class of text encoder ``name``, as the source's model index names it."""
    import transformers

    entry = read_json(source / "model_index.json").get(name)
    class_name = entry[1] if isinstance(entry, list) and len(entry) == 2 else "CLIPTextModel"
    return getattr(transformers, str(class_name))


_TEXT_PREFIXES = {
    ("sd15", "text_encoder"): SD1_TEXT_PREFIX,
    ("sd21-base", "text_encoder"): SD2_TEXT_PREFIX,
    ("sd21", "text_encoder"): SD2_TEXT_PREFIX,
    ("sdxl", "text_encoder"): SDXL_TEXT_PREFIX,
    ("sdxl", "text_encoder_2"): SDXL_TEXT2_PREFIX,
}


def _component_prefix(version: str, name: str) -> str:
    if name == "unet":
        return UNET_PREFIX
    if name == "vae":
        return VAE_PREFIX
    return _TEXT_PREFIXES[(version, name)]


class _FileTensors:
    """The single file's tensors, read one component (key prefix) at a time.

    safetensors are read with plain reads (:func:`read_safetensors`), so only the component
    being loaded is held; a ``.ckpt`` is opened with ``mmap=True`` (its pages are the page
    cache's, dropped under pressure).
    """

    def __init__(self, path: Path) -> None:
        import torch

        self._path = path
        self._index: tuple[int, dict[str, Any]] | None = None
        self._state: dict[str, torch.Tensor] = {}
        if path.suffix.lower() == ".safetensors":
            self._index = safetensors_index(path)
            self.keys = list(self._index[1])
        else:
            try:
                loaded = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
                loaded = torch.load(path, map_location="cpu", weights_only=True)
            self._state = dict(loaded.get("state_dict", loaded))
            self.keys = list(self._state)

    def subset(self, prefix: str) -> dict[str, Any]:
        """Every tensor under ``prefix``, keys unchanged (diffusers' readers expect them)."""
        keys = [k for k in self.keys if k.startswith(prefix)]
        if self._index is not None:
            return read_safetensors(self._path, keys, self._index)
        return {k: self._state[k] for k in keys}


class _SourceTensors:
    """A diffusers component folder's weights, read one tensor at a time."""

    def __init__(self, folder: Path) -> None:
        import torch

        self._files: dict[str, tuple[Path, tuple[int, dict[str, Any]]]] = {}
        self._state: dict[str, torch.Tensor] = {}
        files = [
            folder / name
            for name in ("diffusion_pytorch_model.safetensors", "model.safetensors")
            if (folder / name).is_file()
        ]
        if not files:
            for shard_index in sorted(folder.glob("*.safetensors.index.json")):
                shards = sorted(set(read_json(shard_index)["weight_map"].values()))
                files = [folder / shard for shard in shards]
                break
        for file in files:
            index = safetensors_index(file)
            self._files.update(dict.fromkeys(index[1], (file, index)))
        if not self._files:
            for name in ("diffusion_pytorch_model.bin", "pytorch_model.bin"):
                if (folder / name).is_file():
                    self._state = torch.load(folder / name, map_location="cpu", weights_only=True)
                    break

    def get(self, key: str) -> Any:
        # transformers >= 5.6 names CLIPTextModel weights without "text_model.".
        for name in (key, "text_model." + key, key.removeprefix("text_model.")):
            if name in self._files:
                file, index = self._files[name]
                return read_safetensors(file, [name], index)[name]
            if name in self._state:
                return self._state[name]
        return None


def _load_component(files: _FileTensors, source: Path, version: str, name: str, dtype: Any) -> Any:
    """Component ``name`` from the single file, its tensors read alone and mapped by
    diffusers' own single-file converters (those the pipeline's ``from_single_file`` uses).

    The UNet and VAE take the file's tensors as they are (``assign=True``): diffusers'
    loader would copy each one, briefly holding the component twice.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        create_diffusers_clip_model_from_ldm,
    )

    subset = files.subset(_component_prefix(version, name))
    if not subset:
        raise CheckpointValidationError(f"the file holds no {name} weights")
    with quiet_hub():
        if name not in ("unet", "vae"):
            return create_diffusers_clip_model_from_ldm(
                _text_class(source, name),
                subset,
                subfolder=name,
                config=str(source),
                torch_dtype=dtype,
                local_files_only=True,
            )
        cls: Any = UNet2DConditionModel if name == "unet" else AutoencoderKL
        config = cls.load_config(str(source), subfolder=name, local_files_only=True)
        with torch.device("meta"):  # no memory until the file's tensors are assigned
            model = cls.from_config(config)
        mapping = convert_ldm_unet_checkpoint if name == "unet" else convert_ldm_vae_checkpoint
        state = mapping(checkpoint=subset, config=dict(model.config))
    del subset
    # Weights the file lacks stay on the meta device: the comparison names them.
    model.load_state_dict(state, strict=False, assign=True)
    return model.eval()


def _compare_component(
    name: str, module: Any, reference: _SourceTensors, *, half: bool
) -> tuple[int, list[str]]:
    """Tensors compared and the differences of ``module`` against the source's weights
    (rounded through fp16 when ``half``: what a half file holds), one tensor at a time."""
    import torch

    problems: list[str] = []
    count = 0
    for key, got in module.state_dict().items():
        if key.endswith("position_ids"):
            continue  # derived buffer, rebuilt by the model
        count += 1
        expected = reference.get(key)
        if expected is None:
            problems.append(f"{name}.{key}: not in the source")
        elif got.is_meta:
            problems.append(f"{name}.{key}: not in the file")
        elif got.shape != expected.shape:
            problems.append(f"{name}.{key}: shape {tuple(got.shape)} != {tuple(expected.shape)}")
        else:
            want = expected.half() if half and expected.is_floating_point() else expected
            if got.dtype != want.dtype:
                got, want = got.float(), want.float()
            if not torch.equal(got, want):
                diff = (got.float() - want.float()).abs().max().item()
                problems.append(f"{name}.{key}: differs (max {diff:.3g})")
    return count, problems


def _check_components(
    path: Path, source: Path, version: str, *, half: bool
) -> tuple[dict[str, int], dict[str, Any]]:
    """Load each component of the file alone (only its tensors read), compare it with the
    source's weights read one at a time, and keep it in fp32 for the render."""
    import torch

    try:
        files = _FileTensors(path)
    except Exception as exc:  # safetensors and torch raise plain errors for bad files
        raise CheckpointValidationError(
            f"diffusers cannot load {path} back: {type(exc).__name__}: {exc}"
        ) from exc
    counts: dict[str, int] = {}
    problems: list[str] = []
    kept: dict[str, Any] = {}
    dtype = torch.float16 if half else torch.float32
    for name in _COMPONENTS[version]:
        try:
            module = _load_component(files, source, version, name, dtype)
        except CheckpointValidationError:
            raise
        except Exception as exc:  # diffusers raises plain errors for unreadable layouts
            raise CheckpointValidationError(
                f"diffusers cannot load {path} back ({name}): {type(exc).__name__}: {exc}"
            ) from exc
        counts[name], found = _compare_component(
            name, module, _SourceTensors(source / name), half=half
        )
        problems += found
        with quiet_hub():  # diffusers warns about .to(dtype) on any model
            kept[name] = module.to(torch.float32)
    if problems:
        shown = "; ".join(problems[:5])
        more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise CheckpointValidationError(
            f"{len(problems)} tensors do not load back equal to the source: {shown}{more}"
        )
    return counts, kept


def _assemble(source: Path, version: str, components: dict[str, Any]) -> Any:
    """The single file's pipeline: its checked components with the source's tokenizers and
    scheduler (what ``from_single_file`` with ``config=source`` assembles)."""
    import torch

    kwargs: dict[str, Any] = {"dtype": torch.float32, "local_files_only": True, **components}
    if version != "sdxl":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    with quiet_hub():
        pipe = _pipeline_class(version).from_pretrained(str(source), **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def validation_size(source: Path) -> int:
    """The smallest sensible validation render: 8 latent pixels (more if the UNet needs)."""
    unet = read_json(source / "unet" / "config.json")
    vae = read_json(source / "vae" / "config.json")
    latent = max(8, 1 << (len(unet["block_out_channels"]) - 1))
    return latent << (len(vae["block_out_channels"]) - 1)


def render(
    pipe: Any,
    *,
    prompt: str,
    seeds: list[int],
    steps: int,
    size: int,
    guidance: float = 7.5,
    output_type: str = "np",
) -> Any:
    """Images of ``prompt``, one per seed, each from its own seeded CPU generator."""
    import torch

    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    with torch.no_grad():
        result = pipe(
            prompt=[prompt] * len(seeds),
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=size,
            width=size,
            generator=generators,
            output_type=output_type,
        )
    return result.images


def validate_checkpoint(
    path: Path,
    source: Path,
    *,
    version: str | None = None,
    half: bool = False,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> ValidationReport:
    """Check that single file ``path`` is the diffusers pipeline in ``source``.

    Each component (UNet, VAE, text encoders) is read from the file alone with diffusers'
    single-file readers, in fp16 when the file is half, and every tensor must equal the
    source's (rounded through fp16 when ``half``). Then a fixed-seed image is rendered by
    the source pipeline, which is freed, and by the file's, which must agree. At most one
    pipeline is in memory at a time (SDXL: ~14 GB rather than ~28 GB for two). Raises
    :class:`CheckpointValidationError` otherwise.
    """
    import gc

    import numpy as np

    from vitdex.devices import resolve_device

    say = progress or (lambda _msg: None)
    source = source.expanduser().resolve()
    version = check_version(source, version)
    device = str(resolve_device(device))
    kwargs: dict[str, Any] = {
        "prompt": VALIDATION_PROMPT,
        "seeds": [VALIDATION_SEED],
        "steps": VALIDATION_STEPS,
        "size": validation_size(source),
    }
    say("rendering the fixed-seed sample with the source")
    reference = load_source(source, version, half=half, device=device)
    theirs = np.asarray(render(reference, **kwargs), dtype=np.float64)
    del reference
    gc.collect()  # the source pipeline goes before the file's components come in
    say("comparing tensors")
    counts, components = _check_components(path, source, version, half=half)
    say("rendering the fixed-seed sample with the file")
    loaded = _assemble(source, version, components)
    del components
    if device != "cpu":
        loaded.to(device)
    ours = np.asarray(render(loaded, **kwargs), dtype=np.float64)
    if ours.shape != theirs.shape or not np.isfinite(ours).all():
        raise CheckpointValidationError(f"the sample from {path} is not a finite {theirs.shape}")
    max_diff = float(np.abs(ours - theirs).max())
    if max_diff > SAMPLE_ATOL:
        raise CheckpointValidationError(
            f"the fixed-seed sample from {path} differs from the source's by up to "
            f"{max_diff:.3g} (allowed {SAMPLE_ATOL})"
        )
    return ValidationReport(tensors=counts, sample_max_diff=max_diff, pipeline=loaded)
