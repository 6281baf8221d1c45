"""Writing the single-file checkpoint: safetensors (with Stability's model-spec header) or
``.ckpt``, to a temporary file renamed into place, hashed as written; SD 2.x files get
their inference YAML beside them."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from vitdex.errors import ConfigError
from vitdex.training.bases import SINGLE_FILE_SUFFIXES
from vitdex.training.convert.keymaps import SD2_TEXT_PREFIX, ConversionError
from vitdex.training.convert.source import (
    diffusers_to_ldm,
    native_resolution,
    read_json,
    read_safetensors,
    safetensors_index,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "FORMATS",
    "ConversionResult",
    "atomic_path",
    "convert",
    "default_file_mode",
    "inference_yaml",
    "run_base_file",
    "sha256_file",
]

Format = Literal["safetensors", "ckpt"]
#: File formats a checkpoint can be written in (the first is the default).
FORMATS: tuple[Format, ...] = ("safetensors", "ckpt")


@dataclass(frozen=True)
class ConversionResult:
    """What :func:`convert` wrote."""

    path: Path
    version: str
    format: Format
    half: bool
    sha256: str
    size_bytes: int
    #: The v2 inference YAML beside SD 2.x files (``None`` for SD 1.x and SDXL).
    yaml_path: Path | None
    tensors: int
    #: SD 2.x text encoder keys taken from the single-file base (diffusers drops them).
    carried: tuple[str, ...] = ()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _proc_umask() -> int | None:
    """The umask from ``/proc/self/status`` (Linux >= 4.7), read without changing it."""
    try:
        with Path("/proc/self/status").open(encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _import_umask() -> int:
    # os.umask can only be read by setting it; doing so twice races with threads that
    # create files in between, so it happens once, at import, and only without /proc.
    found = _proc_umask()
    if found is not None:
        return found
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK_AT_IMPORT = _import_umask()


def default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file: ``0o666 & ~umask``.

    safetensors and ``tempfile`` create files 0600; kept through a rename, that would hide
    a checkpoint from an AUTOMATIC1111 or ComfyUI running as another user.
    """
    mask = _proc_umask()
    return 0o666 & ~(_UMASK_AT_IMPORT if mask is None else mask)


def _target_mode(path: Path) -> int:
    """The mode ``path`` has when it exists (replacing keeps it), else the default."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return default_file_mode()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it only when the block succeeds.

    The file gets the mode a plain ``open()`` would give it (or keeps the replaced file's),
    whatever mode the writer created the temporary file with.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        tmp.chmod(_target_mode(path))
        tmp.replace(path)
    finally:
        with suppress(FileNotFoundError):
            tmp.unlink()


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- v2 YAML


def _yaml_list(values: list[int]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]"


def inference_yaml(folder: Path, version: str) -> str:
    """The original ``v2-inference.yaml`` (``sd21-base``) or ``v2-inference-v.yaml``
    (``sd21``, with ``parameterization: "v"``) for the model in ``folder``.

    The architecture numbers come from the folder's configs, so for SD 2.1 itself the
    text equals Stability's file and a differently sized model gets a YAML that builds it.
    """
    if version not in ("sd21", "sd21-base"):
        raise ConfigError(f"the v2 inference YAML is for SD 2.x models, not {version}")
    unet = read_json(folder / "unet" / "config.json")
    vae = read_json(folder / "vae" / "config.json")
    sched = read_json(folder / "scheduler" / "scheduler_config.json")
    channels = [int(c) for c in unet["block_out_channels"]]
    base = channels[0]
    if any(c % base for c in channels):
        raise ConversionError(f"UNet channels {channels} are not multiples of {base}")
    attention_resolutions = sorted(
        (2**level for level, kind in enumerate(unet["down_block_types"]) if "CrossAttn" in kind),
        reverse=True,
    )
    heads = unet.get("num_attention_heads") or unet["attention_head_dim"]
    if isinstance(heads, int):
        head_line = f"num_heads: {heads}"
    else:
        # diffusers' "attention_head_dim" of SD 2.x counts heads per level; the original
        # fixes the channels per head instead (64 for SD 2.1).
        widths = {c // h for c, h in zip(channels, heads, strict=True)}
        if len(widths) != 1:
            raise ConversionError(f"UNet heads {heads} give unequal head widths {widths}")
        head_line = f"num_head_channels: {widths.pop()}"
    depth = unet.get("transformer_layers_per_block", 1)
    if not isinstance(depth, int):
        if len(set(depth)) != 1:
            raise ConversionError("SD 2.x UNets have the same transformer depth at every level")
        depth = depth[0]
    vae_channels = [int(c) for c in vae["block_out_channels"]]
    vae_base = vae_channels[0]
    vae_mult = "\n".join(f"          - {c // vae_base}" for c in vae_channels)
    parameterization = '    parameterization: "v"\n' if version == "sd21" else ""
    return f"""model:
  base_learning_rate: 1.0e-4
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
{parameterization}    linear_start: {sched.get("beta_start", 0.00085)}
    linear_end: {sched.get("beta_end", 0.012)}
    num_timesteps_cond: 1
    log_every_t: 200
    timesteps: {sched.get("num_train_timesteps", 1000)}
    first_stage_key: "jpg"
    cond_stage_key: "txt"
    image_size: {unet["sample_size"]}
    channels: {unet["in_channels"]}
    cond_stage_trainable: false
    conditioning_key: crossattn
    monitor: val/loss_simple_ema
    scale_factor: {vae.get("scaling_factor", 0.18215)}
    use_ema: False # we set this to false because this is an inference only config

    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        use_checkpoint: True
        use_fp16: True
        image_size: 32 # unused
        in_channels: {unet["in_channels"]}
        out_channels: {unet["out_channels"]}
        model_channels: {base}
        attention_resolutions: {_yaml_list(attention_resolutions)}
        num_res_blocks: {unet["layers_per_block"]}
        channel_mult: {_yaml_list([c // base for c in channels])}
        {head_line}
        use_spatial_transformer: True
        use_linear_in_transformer: {bool(unet.get("use_linear_projection", False))}
        transformer_depth: {depth}
        context_dim: {unet["cross_attention_dim"]}
        legacy: False

    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: {vae["latent_channels"]}
        monitor: val/rec_loss
        ddconfig:
          #attn_type: "vanilla-xformers"
          double_z: true
          z_channels: {vae["latent_channels"]}
          resolution: 256
          in_channels: {vae["in_channels"]}
          out_ch: {vae["out_channels"]}
          ch: {vae_base}
          ch_mult:
{vae_mult}
          num_res_blocks: {vae["layers_per_block"]}
          attn_resolutions: []
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity

    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder
      params:
        freeze: True
        layer: "penultimate"
"""


# --------------------------------------------------------------------------- SD 2.x base


def run_base_file(source: Path) -> Path | None:
    """The single file a training run's ``final/`` was trained from, when it was one
    (``result.json`` beside ``final/`` records the base); ``None`` otherwise."""
    result = source.parent / "result.json"
    if source.name != "final" or not result.is_file():
        return None
    try:
        base = json.loads(result.read_text("utf-8"))["config"]["base_model"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(base, str) or Path(base).suffix.lower() not in SINGLE_FILE_SUFFIXES:
        return None
    path = Path(base).expanduser()
    return path if path.is_file() else None


def _base_text_tensors(base: Path, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The OpenCLIP tensors of single file ``base`` that ``state`` lacks: the last layer
    and ``text_projection``, which SD 2 never uses (it reads the penultimate layer) and
    diffusers therefore drops, but which AUTOMATIC1111 and ComfyUI expect in the file."""
    import torch

    if base.suffix.lower() == ".safetensors":
        index = safetensors_index(base)
        header = index[1]
        shapes = {k: tuple(v["shape"]) for k, v in header.items() if k.startswith(SD2_TEXT_PREFIX)}
        missing = [k for k in shapes if k not in state]
        loaded = read_safetensors(base, missing, index)
    else:
        whole = torch.load(base, map_location="cpu", mmap=True, weights_only=True)
        whole = whole.get("state_dict", whole)
        shapes = {k: tuple(v.shape) for k, v in whole.items() if k.startswith(SD2_TEXT_PREFIX)}
        loaded = {k: whole[k].clone() for k in shapes if k not in state}
    if not shapes:
        raise ConversionError(f"the base {base} has no SD 2.x (OpenCLIP) text encoder")
    differing = [k for k, shape in shapes.items() if k in state and tuple(state[k].shape) != shape]
    if differing:
        raise ConversionError(
            f"the base {base} has another text encoder than the model "
            f"({len(differing)} tensors differ in shape, e.g. {differing[0]})"
        )
    return loaded


# --------------------------------------------------------------------------- the file

_ARCHITECTURES = {
    "sd15": ("stable-diffusion-v1", "https://github.com/CompVis/stable-diffusion"),
    "sd21-base": ("stable-diffusion-v2-512", "https://github.com/Stability-AI/stablediffusion"),
    "sd21": ("stable-diffusion-v2-768-v", "https://github.com/Stability-AI/stablediffusion"),
    "sdxl": ("stable-diffusion-xl-v1-base", "https://github.com/Stability-AI/generative-models"),
}


def _metadata(version: str, title: str, resolution: int, half: bool) -> dict[str, str]:
    # Stability's model spec header: lets UIs tell SD 2 "v" from "epsilon" without a YAML.
    architecture, implementation = _ARCHITECTURES[version]
    return {
        "format": "pt",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": architecture,
        "modelspec.implementation": implementation,
        "modelspec.title": title,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.prediction_type": "v" if version == "sd21" else "epsilon",
        "modelspec.date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "vitdex.dtype": "float16" if half else "source",
    }


def _output_format(out: Path, fmt: str | None) -> Format:
    suffix = out.suffix.lower()
    if fmt is None:
        fmt = "ckpt" if suffix == ".ckpt" else "safetensors"
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose safetensors or ckpt")
    expected = ".ckpt" if fmt == "ckpt" else ".safetensors"
    if suffix != expected:
        raise ConfigError(f"a {fmt} checkpoint's file name must end in {expected}: {out}")
    return "ckpt" if fmt == "ckpt" else "safetensors"


def convert(
    source: Path,
    out: Path,
    *,
    version: str | None = None,
    half: bool = False,
    fmt: str | None = None,
    title: str | None = None,
    base_file: Path | None = None,
) -> ConversionResult:
    """Write the diffusers pipeline in ``source`` as one original-layout file at ``out``.

    ``fmt`` is ``safetensors`` (default) or ``ckpt`` (``torch.save({"state_dict": ...})``);
    the file name must carry the matching suffix. ``half`` stores floating tensors as fp16.
    SD 2.x files get their inference YAML beside them, with the same stem (how AUTOMATIC1111
    finds it). Both are written to a temporary file first and renamed into place.

    For SD 2.x, the text encoder tensors diffusers drops (OpenCLIP's last layer and
    ``text_projection``) are carried over from the single file the model was trained from:
    ``base_file``, else the base a run's ``result.json`` names when ``source`` is its
    ``final/``. Without such a file they stay absent, as in any diffusers conversion.
    """
    source = source.expanduser().resolve()
    out = out.expanduser().resolve()
    file_format = _output_format(out, fmt)
    if out.exists():
        raise ConfigError(f"{out} exists; choose another output file or delete it first")
    state, version = diffusers_to_ldm(source, version)
    carried: tuple[str, ...] = ()
    if version in ("sd21", "sd21-base"):
        base = base_file.expanduser().resolve() if base_file else run_base_file(source)
        if base_file is not None and not (base and base.is_file()):
            raise ConfigError(f"no base checkpoint file at {base_file}")
        if base is not None:
            extra = _base_text_tensors(base, state)
            state.update(extra)
            carried = tuple(sorted(extra))
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    state = {k: v.contiguous() for k, v in state.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        if file_format == "safetensors":
            from safetensors.torch import save_file

            meta = _metadata(version, title or out.stem, native_resolution(source), half)
            save_file(state, str(tmp), metadata=meta)
        else:
            import torch

            torch.save({"state_dict": state}, tmp)
        digest = sha256_file(tmp)
        size = tmp.stat().st_size
    yaml_path: Path | None = None
    if version in ("sd21", "sd21-base"):
        yaml_path = out.with_suffix(".yaml")
        _atomic_write_text(yaml_path, inference_yaml(source, version))
    return ConversionResult(
        path=out,
        version=version,
        format=file_format,
        half=half,
        sha256=digest,
        size_bytes=size,
        yaml_path=yaml_path,
        tensors=len(state),
        carried=carried,
    )
