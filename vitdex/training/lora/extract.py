"""Extract a LoRA: the difference between a trained checkpoint and its base, low-rank.

For every layer a kohya LoRA covers (:mod:`.keys`), ``Δ = W_trained − W_base`` in
float32 is cut to rank ``r`` by a truncated SVD, ``Δ ≈ U_r·diag(S_r)·Vh_r``: the best rank-r
approximation in Frobenius norm, so the file is as close to the checkpoint as rank r
allows. ``lora_up = U_r·diag(S_r)``, ``lora_down = Vh_r``. Every layer stores
``alpha = rank`` (the one asked for), and readers scale by ``alpha / r_layer``; a layer
whose own rank is smaller (``min(rank, dims)``) has its ``lora_up`` scaled by
``r_layer / rank`` to cancel that, so one alpha serves all layers and no reader has to
match per-layer alphas by name. Unchanged layers are left out; changes a LoRA cannot
carry (biases, norms, embeddings, layers it does not cover) are counted, not lost silently.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitdex.errors import ConfigError, ModelLoadError, NotFoundError
from vitdex.training.lora.keys import Target, text_encoder_targets, unet_targets

if TYPE_CHECKING:
    import torch

__all__ = [
    "MAX_RANK",
    "ExtractResult",
    "extract_lora",
    "lora_metadata",
    "trained_state",
]

#: The largest rank accepted (a rank above a layer's dims is cut to them anyway).
MAX_RANK = 1024
#: A layer counts as unchanged when ||Δ|| ≤ this × ||W_base|| (float32 checkpoints).
ZERO_DELTA = 1e-6
#: ... and for fp16 checkpoints, whose rounding alone moves weights by ~3e-4 (relative).
ZERO_DELTA_HALF = 1e-3

Say = Callable[[str], None]
Count = Callable[[int, int], None]

#: kohya's ``ss_base_model_version`` and Stability's model-spec architecture per version.
_KOHYA_VERSION = {"sd15": "sd_v1", "sd21-base": "sd_v2", "sd21": "sd_v2", "sdxl": "sdxl_base_v1-0"}
_ARCHITECTURE = {
    "sd15": "stable-diffusion-v1",
    "sd21-base": "stable-diffusion-v2-512",
    "sd21": "stable-diffusion-v2-768-v",
    "sdxl": "stable-diffusion-xl-v1-base",
}
_TEXT_PREFIXES = {
    ("text_encoder", False): "lora_te_",
    ("text_encoder", True): "lora_te1_",
    ("text_encoder_2", True): "lora_te2_",
}


@dataclass
class ExtractResult:
    """What an extraction wrote and how much of the difference the file keeps."""

    path: Path
    sha256: str
    size_bytes: int
    version: str
    rank: int
    alpha: int
    conv_rank: int | None
    text_encoder: bool
    #: LoRA layers written, and their parameter count.
    layers: int
    params: int
    #: Mean over the layers of ||Δ − Δ_r|| / ||Δ||.
    mean_relative_error: float
    #: Σ||Δ_r||² / Σ||Δ||² over the layers written: the share of the difference kept.
    energy_retained: float
    #: Covered layers left out because the checkpoint did not change them.
    unchanged: int
    #: Changed tensors no LoRA layer carries (biases, norms, uncovered layers), by name.
    not_captured: list[str] = field(default_factory=list)
    #: Per layer: kohya name -> (rank, relative error).
    per_layer: dict[str, tuple[int, float]] = field(default_factory=dict)

    def config(self) -> dict[str, Any]:
        """The registry row's ``config``: how it was made and what it keeps."""
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "conv_rank": self.conv_rank,
            "text_encoder": self.text_encoder,
            "layers": self.layers,
            "params": self.params,
            "mean_relative_error": round(self.mean_relative_error, 6),
            "energy_retained": round(self.energy_retained, 6),
            "unchanged_layers": self.unchanged,
            "not_captured": len(self.not_captured),
        }


def _strip_text_model(state: dict[str, Any], encoder: Any) -> dict[str, Any]:
    if hasattr(encoder, "text_model"):
        return state
    return {k.removeprefix("text_model."): v for k, v in state.items()}


def trained_state(checkpoint: Path, base: Any, version: str) -> dict[str, dict[str, Any]]:
    """The trained weights per component (diffusers names), from a single file or folder.

    A single file (original layout) is mapped onto the base's components with the same
    converters diffusers' ``from_single_file`` uses, so no configs are fetched: the base
    pipeline already has them.
    """
    if checkpoint.is_dir():
        from vitdex.training.bases import load_base

        pipe = load_base(checkpoint, version=version).pipeline
        return {
            name: dict(getattr(pipe, name).state_dict())
            for name in ("unet", "text_encoder", "text_encoder_2")
            if getattr(pipe, name, None) is not None
        }
    from diffusers.loaders import single_file_utils as sf

    try:
        raw = sf.load_single_file_checkpoint(str(checkpoint), local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot read the checkpoint {checkpoint}: {exc}") from exc
    states: dict[str, dict[str, Any]] = {}
    try:
        states["unet"] = sf.convert_ldm_unet_checkpoint(raw, dict(base.unet.config))
        if version == "sdxl":
            states["text_encoder"] = sf.convert_ldm_clip_checkpoint(raw)
            states["text_encoder_2"] = sf.convert_open_clip_checkpoint(
                base.text_encoder_2, raw, prefix="conditioner.embedders.1.model."
            )
        elif version.startswith("sd21"):
            states["text_encoder"] = sf.convert_open_clip_checkpoint(
                base.text_encoder, raw, prefix="cond_stage_model.model."
            )
        else:
            states["text_encoder"] = sf.convert_ldm_clip_checkpoint(raw)
    except (KeyError, ValueError, IndexError, RuntimeError) as exc:
        raise ConfigError(
            f"the checkpoint {checkpoint} does not match the base ({version}): "
            f"{type(exc).__name__}: {exc}; give the base it was trained from"
        ) from exc
    for name in ("text_encoder", "text_encoder_2"):
        if name in states:
            states[name] = _strip_text_model(states[name], getattr(base, name))
    if not states["unet"]:
        raise ConfigError(f"{checkpoint} has no UNet weights in the original layout")
    return states


def _targets(base: Any, version: str, *, conv: bool, text_encoder: bool) -> list[Target]:
    found = unet_targets(base.unet, version=version, conv=conv)
    if text_encoder:
        sdxl = version == "sdxl"
        for name in ("text_encoder", "text_encoder_2"):
            encoder = getattr(base, name, None)
            if encoder is not None:
                prefix = _TEXT_PREFIXES[(name, sdxl)]
                found += text_encoder_targets(encoder, component=name, prefix=prefix)
    return found


def _low_rank(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``U_r, S_r, Vh_r`` of ``delta``: a full SVD when the rank is a large share of the
    matrix, else a randomized one (seeded), much faster for ranks far below the dims."""
    import torch

    small = min(delta.shape)
    if rank * 2 >= small or small <= 128:
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        return u[:, :rank], s[:rank], vh[:rank]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        u, s, v = torch.svd_lowrank(delta, q=min(rank + 10, small), niter=6)
    return u[:, :rank], s[:rank], v[:, :rank].T


def lora_metadata(
    *, version: str, rank: int, conv_rank: int | None, title: str, extra: dict[str, str]
) -> dict[str, str]:
    """The safetensors header kohya's tools, AUTOMATIC1111 and ComfyUI read."""
    from vitdex.training.bases import get_version

    info = get_version(version)
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(rank),
        "ss_base_model_version": _KOHYA_VERSION[version],
        "ss_v2": str(version.startswith("sd21")),
        "ss_output_name": title,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{_ARCHITECTURE[version]}/lora",
        "modelspec.implementation": "https://github.com/kohya-ss/sd-scripts",
        "modelspec.title": title,
        "modelspec.resolution": f"{info.resolution}x{info.resolution}",
        "modelspec.prediction_type": "v" if info.prediction_type == "v_prediction" else "epsilon",
        "modelspec.date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if conv_rank is not None:
        meta["ss_network_args"] = json.dumps({"conv_dim": conv_rank, "conv_alpha": rank})
    meta.update(extra)
    return meta


def _check_rank(value: int, what: str) -> int:
    if not 1 <= value <= MAX_RANK:
        raise ConfigError(f"{what} must be between 1 and {MAX_RANK}, not {value}")
    return value


def extract_lora(
    checkpoint: Path,
    base: str | Path,
    out: Path,
    *,
    rank: int,
    conv_rank: int | None = None,
    text_encoder: bool = True,
    title: str | None = None,
    version: str | None = None,
    base_config: str | Path | None = None,
    half: bool = False,
    device: str = "cpu",
    metadata: dict[str, str] | None = None,
    say: Say | None = None,
    count: Count | None = None,
) -> ExtractResult:
    """Write the LoRA of ``checkpoint`` (single file or diffusers folder) against ``base``
    (hub id, diffusers folder or single file, loaded offline-capable by
    :func:`~vitdex.training.bases.load_base`) to ``out`` (atomically) and return what it
    keeps. ``half`` stores fp16 weights (half the size, ~1e-3 more error).
    """
    import torch
    from safetensors.torch import save_file

    from vitdex.devices import resolve_device
    from vitdex.training.bases import load_base
    from vitdex.training.convert import atomic_path, sha256_file

    tell = say or (lambda _msg: None)
    _check_rank(rank, "the rank")
    if conv_rank is not None:
        _check_rank(conv_rank, "the conv rank")
    checkpoint = checkpoint.expanduser().resolve()
    if not checkpoint.exists():
        raise NotFoundError(f"no checkpoint at {checkpoint}")
    if out.suffix.lower() != ".safetensors":
        raise ConfigError(f"a LoRA is written as .safetensors, not {out.name}")
    svd_device = resolve_device(device)

    tell(f"loading the base {base}")
    loaded = load_base(base, version=version, config=base_config)
    pipe, version = loaded.pipeline, loaded.version.name
    tell(f"reading {checkpoint}")
    trained = trained_state(checkpoint, pipe, version)
    half_source = any(t.dtype == torch.float16 for t in trained["unet"].values())
    zero = ZERO_DELTA_HALF if half_source else ZERO_DELTA
    targets = _targets(pipe, version, conv=conv_rank is not None, text_encoder=text_encoder)

    tensors: dict[str, torch.Tensor] = {}
    result = ExtractResult(
        path=out,
        sha256="",
        size_bytes=0,
        version=version,
        rank=rank,
        alpha=rank,
        conv_rank=conv_rank,
        text_encoder=text_encoder,
        layers=0,
        params=0,
        mean_relative_error=0.0,
        energy_retained=1.0,
        unchanged=0,
    )
    base_states = {c: dict(getattr(pipe, c).state_dict()) for c in {t.component for t in targets}}
    total_energy = kept_energy = 0.0
    errors: list[float] = []
    covered: set[tuple[str, str]] = set()
    zeros: dict[str, tuple[int, ...]] = {}
    store = torch.float16 if half else torch.float32
    with torch.no_grad():
        for done, target in enumerate(targets, start=1):
            key = f"{target.path}.weight"
            covered.add((target.component, key))
            w_base = base_states[target.component][key]
            w_trained = trained.get(target.component, {}).get(key)
            if w_trained is None or tuple(w_trained.shape) != tuple(w_base.shape):
                raise ConfigError(
                    f"the checkpoint does not match the base {base} at {target.component}."
                    f"{key} (missing or another shape): give the base it was trained from"
                )
            delta = (w_trained.float() - w_base.float()).to(svd_device)
            norm = float(torch.linalg.vector_norm(delta))
            if norm <= zero * float(torch.linalg.vector_norm(w_base.float())):
                result.unchanged += 1
                if target.component != "unet" and target.path.endswith(".out_proj"):
                    # diffusers reads a text encoder's kohya attention keys in their old
                    # layout only when out_proj keys are present: keep a zero layer.
                    zeros[target.name] = tuple(delta.shape)
                if count:
                    count(done, len(targets))
                continue
            shape = tuple(delta.shape)
            matrix = delta.reshape(shape[0], -1)
            asked = conv_rank if target.spatial and conv_rank is not None else rank
            r = min(asked, *matrix.shape)
            u, s, vh = _low_rank(matrix, r)
            approx = (u * s.unsqueeze(0)) @ vh
            # The residual itself: ||Δ||² − ||S_r||² cancels to noise for near-exact fits.
            error = float(torch.linalg.vector_norm(matrix - approx)) / norm
            total_energy += norm**2
            kept_energy += norm**2 * (1.0 - min(error, 1.0) ** 2)
            errors.append(error)
            # Readers scale by alpha / r; this undoes that for layers of a smaller rank.
            up = u * (s * (r / rank)).unsqueeze(0)
            down = vh
            if len(shape) == 4:
                up = up.reshape(shape[0], r, 1, 1)
                down = down.reshape(r, *shape[1:])
            tensors[f"{target.name}.lora_up.weight"] = up.to("cpu", store).contiguous()
            tensors[f"{target.name}.lora_down.weight"] = down.to("cpu", store).contiguous()
            tensors[f"{target.name}.alpha"] = torch.tensor(float(rank), dtype=store)
            result.layers += 1
            result.params += up.numel() + down.numel()
            result.per_layer[target.name] = (r, error)
            if count:
                count(done, len(targets))
        for component, state in base_states.items():
            for key, w_base in state.items():
                w_trained = trained.get(component, {}).get(key)
                if (component, key) in covered or w_trained is None:
                    continue
                if w_trained.shape == w_base.shape and float(
                    torch.linalg.vector_norm(w_trained.float() - w_base.float())
                ) <= zero * float(torch.linalg.vector_norm(w_base.float())):
                    continue
                result.not_captured.append(f"{component}.{key}")
    if any(name.startswith("lora_te") for name in tensors):
        for name, (rows, cols) in zeros.items():
            tensors[f"{name}.lora_up.weight"] = torch.zeros(rows, 1, dtype=store)
            tensors[f"{name}.lora_down.weight"] = torch.zeros(1, cols, dtype=store)
            tensors[f"{name}.alpha"] = torch.tensor(float(rank), dtype=store)
    if not tensors:
        raise ConfigError(
            f"{checkpoint} does not differ from the base {base} in any layer a LoRA covers: "
            "give the base it was trained from"
        )
    result.mean_relative_error = sum(errors) / len(errors)
    result.energy_retained = kept_energy / total_energy if total_energy else 1.0
    name = title or out.stem
    header = lora_metadata(
        version=version,
        rank=rank,
        conv_rank=conv_rank,
        title=name,
        extra={
            "ss_sd_model_name": str(base),
            "vitdex.base_model": str(base),
            "vitdex.energy_retained": f"{result.energy_retained:.6f}",
            **(metadata or {}),
        },
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tell(f"writing {result.layers} layers to {out}")
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    result.sha256 = sha256_file(out)
    result.size_bytes = out.stat().st_size
    return result
