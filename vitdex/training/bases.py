"""Base models DreamBooth can start from: the version registry, detection and loading.

A *version* says what a Stable Diffusion checkpoint is: the resolution it was trained at,
what its UNet predicts (noise, ``epsilon``, or velocity, ``v_prediction``), its text
encoders and pipeline class, and whether a full fine-tune is practical. A *base* is one
concrete checkpoint, given as a hub id, a diffusers folder or a single ``.safetensors`` /
``.ckpt`` file. When the version is not given it is read from the checkpoint's configs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitdex.errors import ConfigError, ModelLoadError, NotFoundError
from vitdex.indexer.models import hub_offline
from vitdex.training.quiet import quiet_hub
from vitdex.training.versions import (
    BASE_VERSIONS,
    SD_VERSIONS,
    BaseVersion,
    check_full_finetune,
    check_resolution,
    get_version,
)

__all__ = [
    "BASE_VERSIONS",
    "SD_VERSIONS",
    "SINGLE_FILE_SUFFIXES",
    "BaseVersion",
    "LoadedBase",
    "base_kind",
    "check_base_available",
    "check_full_finetune",
    "check_resolution",
    "detect_loaded_version",
    "detect_version",
    "detect_version_from_configs",
    "get_version",
    "load_base",
    "version_of",
]

#: File endings accepted as single-file (original Stable Diffusion layout) checkpoints.
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


# The registry lives in vitdex.training.versions; its names are re-exported here.


# --------------------------------------------------------------------------- detection


def detect_version_from_configs(configs: Mapping[str, Mapping[str, Any] | None]) -> str:
    """The version a pipeline's component configs describe.

    ``configs`` maps component names (``model_index``, ``unet``, ``scheduler``,
    ``text_encoder``, ``text_encoder_2``) to their config dicts; missing ones may be absent
    or None. Signs used, in order: a second text encoder or SDXL's size conditioning means
    ``sdxl``; an OpenCLIP text encoder (``gelu``), 1024-wide cross-attention or linear
    projections in the transformers mean SD 2.x, and then v-prediction (or a 96-latent
    sample size, 768 px, when the scheduler does not say) means ``sd21``, else
    ``sd21-base``; anything else is ``sd15``.
    """
    index = configs.get("model_index") or {}
    unet = configs.get("unet") or {}
    scheduler = configs.get("scheduler") or {}
    text = configs.get("text_encoder") or {}
    class_name = str(index.get("_class_name", ""))
    has_te2 = bool(configs.get("text_encoder_2")) or bool(
        (index.get("text_encoder_2") or [None])[0]
    )
    if has_te2 or "XL" in class_name or unet.get("addition_embed_type") == "text_time":
        return "sdxl"
    cross = unet.get("cross_attention_dim")
    sd2 = (
        text.get("hidden_act") == "gelu" or cross == 1024 or bool(unet.get("use_linear_projection"))
    )
    if not sd2:
        return "sd15"
    prediction = scheduler.get("prediction_type")
    if prediction == "v_prediction":
        return "sd21"
    if prediction is None and unet.get("sample_size") == 96:
        return "sd21"
    return "sd21-base"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else None


def _folder_configs(folder: Path) -> dict[str, dict[str, Any] | None]:
    return {
        "model_index": _read_json(folder / "model_index.json"),
        "unet": _read_json(folder / "unet" / "config.json"),
        "scheduler": _read_json(folder / "scheduler" / "scheduler_config.json"),
        "text_encoder": _read_json(folder / "text_encoder" / "config.json"),
        "text_encoder_2": _read_json(folder / "text_encoder_2" / "config.json"),
    }


def version_of(base_model: str, version: str | None) -> str | None:
    """The SD version of ``base_model``: as given, else detected from a local diffusers
    folder's configs; None for hub ids and single files until they are loaded."""
    if version is None and base_kind(base_model) == "folder":
        return detect_version(base_model)
    return version


def detect_version(folder: str | Path) -> str:
    """The version of the diffusers pipeline saved in ``folder`` (reads configs, no weights)."""
    path = Path(folder).expanduser()
    if not (path / "model_index.json").is_file():
        raise ConfigError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
    return detect_version_from_configs(_folder_configs(path))


def detect_loaded_version(pipe: Any) -> str:
    """The version of a loaded diffusers pipeline, from its components' configs."""

    def cfg(name: str) -> dict[str, Any] | None:
        component = getattr(pipe, name, None)
        config = getattr(component, "config", None)
        if config is None:
            return None
        return dict(config.to_dict() if hasattr(config, "to_dict") else config)

    return detect_version_from_configs(
        {
            "model_index": {"_class_name": type(pipe).__name__},
            "unet": cfg("unet"),
            "scheduler": cfg("scheduler"),
            "text_encoder": cfg("text_encoder"),
            "text_encoder_2": cfg("text_encoder_2"),
        }
    )


def _single_file_version(path: Path) -> str:
    """The version of an original-layout checkpoint, from its tensor names and shapes."""
    from diffusers.loaders.single_file_utils import (
        infer_diffusers_model_type,
        load_single_file_checkpoint,
    )

    try:
        checkpoint = load_single_file_checkpoint(str(path), local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot read the checkpoint {path}: {exc}") from exc
    kind = infer_diffusers_model_type(checkpoint)
    # SD 2.x weights do not say whether they predict v; the 768 px model (v) is the common one.
    mapping = {"v1": "sd15", "v2": "sd21", "xl_base": "sdxl"}
    if kind not in mapping:
        raise ConfigError(
            f"{path} looks like a {kind!r} checkpoint; DreamBooth trains "
            f"{', '.join(BASE_VERSIONS)} (give the version explicitly if this is wrong)"
        )
    return mapping[kind]


# --------------------------------------------------------------------------- loading

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def base_kind(spec: str | Path) -> str:
    """How a base is given: ``folder``, ``single_file`` or ``hub``.

    An existing folder or file is local; a path that does not exist is a NotFoundError
    (never silently tried on the hub); ``owner/name`` is a hub id.
    """
    text = str(spec)
    try:
        path = Path(text).expanduser()
        is_dir, is_file = path.is_dir(), path.is_file()
    except (ValueError, OSError, RuntimeError):  # NUL bytes, unencodable, unknown ~user
        raise ConfigError(f"base model {text!r} is not a usable path or hub id") from None
    if is_dir:
        return "folder"
    if is_file:
        if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
            return "single_file"
        raise ConfigError(
            f"{path} is a file but not a checkpoint; expected one of "
            f"{', '.join(SINGLE_FILE_SUFFIXES)} or a diffusers folder"
        )
    # "models/x.safetensors" has a hub id's shape but is a missing file, not a repository.
    if _HUB_ID.match(text) and path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        return "hub"
    raise NotFoundError(f"base model {text!r} is neither an existing folder or file nor a hub id")


@dataclass
class LoadedBase:
    """A base model loaded as a diffusers pipeline, with what is known about it."""

    #: The pipeline (components on the CPU, float32 unless a dtype was asked for).
    pipeline: Any
    #: The registry entry the checkpoint was loaded as.
    version: BaseVersion
    #: The base as given (hub id, folder or file).
    source: str
    #: ``hub``, ``folder`` or ``single_file``.
    kind: str
    #: The version read from the checkpoint itself.
    detected_version: str
    #: What the checkpoint's scheduler predicts (it may differ from the registry when forced).
    prediction_type: str


def _not_cached_error(spec: str, revision: str | None, *, offline: bool) -> ModelLoadError:
    """A hub base neither cached nor downloadable, with the ways out (diffusers' own text
    points at a stack trace that a CLI user never sees)."""
    label = spec if revision is None else f"{spec} (revision {revision})"
    return ModelLoadError(
        f"cannot load the Stable Diffusion base {label!r}: it is not in the local Hugging "
        "Face cache and the hub cannot be reached "
        f"({'HF_HUB_OFFLINE is set' if offline else 'no connection'}). Ways out: download "
        f"it once on a connected machine (`hf download {spec}`) and copy the cache; or give "
        "--base FOLDER, a diffusers folder saved elsewhere (`save_pretrained`, or the "
        "snapshot folder of a copied cache); or, for a single .safetensors/.ckpt file, "
        "--base FILE --base-config FOLDER, a local diffusers folder of the same architecture"
    )


def check_base_available(spec: str, revision: str | None = None) -> None:
    """Refuse early (:class:`ModelLoadError`, exit code 3) a hub base that is not cached
    while HF_HUB_OFFLINE is set; anything else is left to :func:`load_base`."""
    from huggingface_hub import try_to_load_from_cache

    if base_kind(spec) != "hub" or not hub_offline():
        return
    try:
        cached = try_to_load_from_cache(spec, "model_index.json", revision=revision)
    except Exception:  # a malformed id or cache: diffusers says what is wrong
        return
    if not isinstance(cached, str):
        raise _not_cached_error(spec, revision, offline=True)


def _hub_error(spec: str, revision: str | None, exc: Exception) -> ModelLoadError:
    offline = hub_offline()
    name, text = type(exc).__name__, str(exc).lower()
    unreachable = ("offline", "not fully cached", "connect", "cannot reach")
    if offline or "LocalEntryNotFound" in name or any(word in text for word in unreachable):
        return _not_cached_error(spec, revision, offline=offline)
    if "RepositoryNotFound" in name or "GatedRepo" in name:
        return ModelLoadError(
            f"the hub has no accessible repository {spec!r} (wrong id, private or gated: "
            "log in with `hf auth login` and accept its licence)"
        )
    return ModelLoadError(f"cannot load {spec!r} from the hub: {exc}")


def _pipeline_class(name: str) -> Any:
    import diffusers

    return getattr(diffusers, name)


def load_base(
    spec: str | Path,
    *,
    version: str | None = None,
    config: str | Path | None = None,
    revision: str | None = None,
    force: bool = False,
    torch_dtype: Any = None,
    components: Mapping[str, Any] | None = None,
) -> LoadedBase:
    """Load a base model as a diffusers pipeline.

    ``spec`` is a hub id (``owner/name``; ``revision`` pins a commit or branch), a diffusers
    folder, or a single-file checkpoint. A single file needs the matching diffusers configs:
    ``config`` (a local diffusers folder of the same architecture) makes loading work
    offline; without it diffusers fetches the reference configs from the hub. ``version``
    is checked against what the checkpoint says it is (a mismatch is refused unless
    ``force``); when not given the detected version is used. ``components`` are passed to
    the pipeline instead of loading those parts (e.g. a trained UNet).
    """
    source = str(spec)
    kind = base_kind(spec)
    expected = get_version(version) if version is not None else None
    extra: dict[str, Any] = dict(components or {})
    if torch_dtype is not None:
        extra["torch_dtype"] = torch_dtype

    if kind == "single_file":
        path = Path(source).expanduser()
        if config is not None:
            config_dir = Path(config).expanduser()
            detected = detect_version(config_dir)
        else:
            config_dir = None
            detected = _single_file_version(path)
        chosen = expected or get_version(detected)
        cls = _pipeline_class(chosen.pipeline_class)
        kwargs: dict[str, Any] = {**extra}
        if config_dir is not None:
            kwargs.update(config=str(config_dir), local_files_only=True)
        if chosen.pipeline_class == "StableDiffusionPipeline":
            kwargs.setdefault("safety_checker", None)
            kwargs.setdefault("requires_safety_checker", False)
        try:
            with quiet_hub():
                pipe = cls.from_single_file(str(path), **kwargs)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if config_dir is None:
                raise ModelLoadError(
                    f"cannot load the single-file checkpoint {path}: without `config`, diffusers "
                    f"fetches the {chosen.title} configs from the hub, and that failed "
                    f"({first}). Offline, pass a local diffusers folder of the same "
                    "architecture (e.g. the base model's) as `config`"
                ) from exc
            raise ModelLoadError(f"cannot load the single-file checkpoint {path}: {first}") from exc
    else:
        from diffusers import DiffusionPipeline

        cls = _pipeline_class(expected.pipeline_class) if expected else DiffusionPipeline
        kwargs = {**extra}
        if kind == "hub" and revision:
            kwargs["revision"] = revision
        folder_version = None
        if kind == "folder":
            folder_version = detect_version(source)
            if (
                expected is None or expected.pipeline_class == "StableDiffusionPipeline"
            ) and folder_version != "sdxl":
                kwargs.setdefault("safety_checker", None)
                kwargs.setdefault("requires_safety_checker", False)
        if kind == "hub":
            check_base_available(source, revision)
        try:
            with quiet_hub():
                pipe = cls.from_pretrained(source, **kwargs)
        except Exception as exc:
            if kind == "hub":
                raise _hub_error(source, revision, exc) from exc
            raise ModelLoadError(f"cannot load the diffusers folder {source}: {exc}") from exc
        detected = folder_version or detect_loaded_version(pipe)

    chosen = expected or get_version(detected)
    if chosen.name != detected and not force:
        raise ConfigError(
            f"{source} looks like {get_version(detected).title} ({detected}), not "
            f"{chosen.title}; give version {detected!r}, or force it"
        )
    prediction = str(pipe.scheduler.config.get("prediction_type", "epsilon"))
    if prediction != chosen.prediction_type and not force:
        raise ConfigError(
            f"{source} predicts {prediction!r} but {chosen.title} predicts "
            f"{chosen.prediction_type!r}; give the right version, or force it"
        )
    return LoadedBase(
        pipeline=pipe,
        version=chosen,
        source=source,
        kind=kind,
        detected_version=detected,
        prediction_type=prediction,
    )
