"""ViT checkpoints on disk: finding them, fingerprinting them, reading their preprocessing.

Everything here works on files; nothing imports torch at module level, so the CLI can
answer ``--help`` without it. :func:`build_random_vit` builds randomly initialised
checkpoints for the demo fallback, the benchmark and the tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vitdex.errors import ModelLoadError

__all__ = [
    "PRESETS",
    "VIT_BASE_PREPROCESSOR",
    "Checkpoint",
    "Preprocessing",
    "build_random_vit",
    "folder_fingerprint",
    "hub_endpoint",
    "load_help",
    "locate_checkpoint",
    "normalize_model_id",
    "quiet_progress",
    "read_preprocessing",
]

log = logging.getLogger(__name__)

#: Architectures :func:`build_random_vit` can build. "base" is ViT-B/16 at 224 pixels, the
#: shape of google/vit-base-patch16-224; "tiny" is small enough to build in milliseconds.
PRESETS: dict[str, dict[str, int]] = {
    "base": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "image_size": 224,
        "patch_size": 16,
    },
    "tiny": {
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "image_size": 32,
        "patch_size": 8,
    },
}

#: google/vit-base-patch16-224's preprocessor_config.json.
VIT_BASE_PREPROCESSOR: dict[str, Any] = {
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "ViTImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "resample": 2,
    "rescale_factor": 1 / 255,
    "size": {"height": 224, "width": 224},
}

# What a checkpoint folder must hold, and which hub files are fetched for one.
_WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json")
_HUB_PATTERNS = [
    "config.json",
    "preprocessor_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
]
_SNAPSHOT_DIR = re.compile(r"models--[^/\\]+[/\\]snapshots[/\\]([0-9a-f]{40})$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_PROBE_TIMEOUT_S = 3.0


def load_help() -> str:
    """The fix that every :class:`ModelLoadError` message ends with."""
    return (
        "To fix it, point VITDEX_MODEL at a local folder containing config.json, "
        "model.safetensors and preprocessor_config.json (for example one written by "
        "`save_pretrained`), or download the model once with network access and "
        "HF_HUB_OFFLINE unset (later runs read it from the Hugging Face cache)."
    )


def _load_error(model: str, what: str) -> ModelLoadError:
    return ModelLoadError(f"cannot load the ViT model {model!r}: {what}. {load_help()}")


# --------------------------------------------------------------------------- building


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """Hide transformers' per-load progress bars ("Loading weights") while inside."""
    from transformers.utils import logging as _hf_logging

    hf_logging: Any = _hf_logging  # partly untyped
    was_enabled = hf_logging.is_progress_bar_enabled()
    if was_enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def build_random_vit(
    folder: Path,
    *,
    preset: str = "base",
    seed: int = 0,
    num_labels: int | None = 1000,
    image_size: int | None = None,
) -> Path:
    """Save a randomly initialised ViT checkpoint to ``folder`` and return the folder.

    The folder gets ``config.json``, ``model.safetensors`` and a ``preprocessor_config.json``
    equal to google/vit-base-patch16-224's (at the model's image size). With ``num_labels``
    the model is a ``ViTForImageClassification`` whose labels are named ``"label N"``
    (tiny) or ``"random-label-N"`` (base); with ``None`` it is a headless ``ViTModel``.
    The same ``seed`` always gives the same weights.
    """
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTModel

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    shape: dict[str, Any] = dict(PRESETS[preset])
    if image_size is not None:
        shape["image_size"] = image_size
    extra: dict[str, Any] = {}
    if num_labels is not None:
        prefix = "label " if preset == "tiny" else "random-label-"
        id2label = {i: f"{prefix}{i}" for i in range(num_labels)}
        extra = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    config = ViTConfig(**shape, **extra)

    # A private RNG stream: building a model must not disturb the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: Any
        if num_labels is None:
            model = ViTModel(config, add_pooling_layer=False)
        else:
            model = ViTForImageClassification(config)
    model.eval()

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with quiet_progress():
        model.save_pretrained(folder)
    # save_pretrained leaves the weights owner-only (0600); a checkpoint shared by the
    # api and worker containers must be readable by other users too.
    for weights in folder.glob("*.safetensors"):
        weights.chmod(0o644)
    size = shape["image_size"]
    preprocessor = {**VIT_BASE_PREPROCESSOR, "size": {"height": size, "width": size}}
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    return folder


# --------------------------------------------------------------------------- locating


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint resolved to a folder on this machine."""

    #: The hub id as given, or the absolute folder path.
    model_id: str
    folder: Path
    #: Hub commit hash when known, else the revision given, else None (fingerprint later).
    revision: str | None
    from_hub: bool


def _looks_like_path(model: str) -> bool:
    return (
        model.startswith(("/", "./", "../", "~", "\\"))
        or bool(re.match(r"^[A-Za-z]:[\\/]", model))
        or not _HUB_ID.match(model)
    )


def _offline() -> bool:
    # Read at call time: huggingface_hub reads HF_HUB_OFFLINE once, at import.
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    return False


def hub_endpoint() -> str:
    """The Hugging Face endpoint URL that downloads would use."""
    from huggingface_hub import constants

    return str(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)


def _hub_reachable(endpoint: str, timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout`` seconds.

    huggingface_hub retries an unreachable host for about half a minute; this probe
    lets an offline machine fail in seconds. DNS lookups have no timeout of their own,
    so the probe runs in a daemon thread that is abandoned if it takes too long.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # only the proxy knows; let huggingface_hub try
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, name="vitdex-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _check_folder(model: str, folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise _load_error(model, f"the folder {folder} has no config.json")
    if not any((folder / name).is_file() for name in _WEIGHT_NAMES):
        found = sorted(p.name for p in folder.glob("*.bin")) + sorted(
            p.name for p in folder.glob("*.pt*")
        )
        hint = f" (found {', '.join(found)}; only safetensors weights are loaded)" if found else ""
        raise _load_error(model, f"the folder {folder} has no model.safetensors{hint}")


def _snapshot_revision(folder: Path) -> str | None:
    match = _SNAPSHOT_DIR.search(str(folder))
    return match.group(1) if match else None


def normalize_model_id(model: str) -> str:
    """A hub id unchanged, a folder path made absolute (what a space records as its model)."""
    model = model.strip()
    path = Path(model).expanduser()
    if model and (path.exists() or _looks_like_path(model)):
        return str(path.resolve())
    return model


def locate_checkpoint(model: str, revision: str | None = None) -> Checkpoint:
    """Resolve a hub id or folder path to a complete checkpoint folder on this machine.

    Hub ids are looked up in the local Hugging Face cache first, so a cached model never
    touches the network; otherwise (unless HF_HUB_OFFLINE is set) the few files a ViT
    needs are downloaded. Raises :class:`ModelLoadError` saying what failed and how to fix it.
    """
    model = model.strip()
    if not model:
        raise _load_error(model, "no model was given")
    path = Path(model).expanduser()
    if path.exists() or _looks_like_path(model):
        path = path.resolve()
        if not path.exists():
            raise _load_error(model, f"the folder {path} does not exist")
        if not path.is_dir():
            raise _load_error(model, f"{path} is a file, not a checkpoint folder")
        _check_folder(model, path)
        return Checkpoint(str(path), path, _snapshot_revision(path) or revision, from_hub=False)
    return _from_hub(model, revision)


def _from_hub(model: str, revision: str | None) -> Checkpoint:
    from huggingface_hub import snapshot_download

    def fetch(local_only: bool) -> Path:
        return Path(
            snapshot_download(
                model,
                revision=revision,
                allow_patterns=_HUB_PATTERNS,
                local_files_only=local_only,
            )
        )

    cached_error: Exception | None = None
    try:
        folder = fetch(local_only=True)
    except Exception as exc:  # not cached (or only partly): maybe download below
        cached_error = exc
    else:
        _check_folder(model, folder)
        return Checkpoint(model, folder, _snapshot_revision(folder) or revision, from_hub=True)

    label = model if revision is None else f"{model} (revision {revision})"
    # "models/vit" is a valid hub id and a relative path: say that no such folder exists.
    also = f"; there is no folder {Path(model).resolve()} either" if "/" in model else ""
    if _offline():
        raise _load_error(
            model,
            f"{label} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set "
            f"({type(cached_error).__name__}){also}",
        )
    endpoint = hub_endpoint()
    if not _hub_reachable(endpoint):
        raise _load_error(
            model,
            f"{label} is not in the local Hugging Face cache and {endpoint} cannot be reached "
            f"(no network?){also}",
        )
    try:
        folder = fetch(local_only=False)
    except Exception as exc:
        raise _load_error(
            model, f"downloading {label} from {endpoint} failed: {type(exc).__name__}: {exc}"
        ) from exc
    _check_folder(model, folder)
    return Checkpoint(model, folder, _snapshot_revision(folder) or revision, from_hub=True)


# --------------------------------------------------------------------------- fingerprints


def _hash_cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vitdex" / "file-hashes.json"


_hash_lock = threading.Lock()
_MAX_CACHED_HASHES = 512


def _file_sha256(path: Path) -> str:
    """sha256 of a (large) file, remembered across runs by (path, size, mtime_ns)."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_file = _hash_cache_path()
    with _hash_lock:
        try:
            cache: dict[str, Any] = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
        entry = cache.get(key)
        if isinstance(entry, dict) and isinstance(entry.get("sha256"), str):
            return str(entry["sha256"])
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
        value = digest.hexdigest()
        cache[key] = {"sha256": value, "at": time.time()}
        if len(cache) > _MAX_CACHED_HASHES:  # keep the newest entries only
            ordered = sorted(cache.items(), key=lambda kv: kv[1].get("at", 0), reverse=True)
            cache = dict(ordered[:_MAX_CACHED_HASHES])
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache))
            tmp.replace(cache_file)
        except OSError:  # a read-only home only costs a re-hash next time
            pass
        return value


def folder_fingerprint(folder: Path) -> str:
    """A content fingerprint of a checkpoint folder: sha256 over config.json and the weights."""
    digest = hashlib.sha256()
    digest.update(b"config.json\0" + (folder / "config.json").read_bytes())
    weights = sorted(
        p for p in folder.iterdir() if p.is_file() and p.name.endswith((".safetensors", ".json"))
    )
    for path in weights:
        if path.name.endswith(".safetensors"):
            digest.update(f"\0{path.name}\0{_file_sha256(path)}".encode())
        elif path.name == "model.safetensors.index.json":
            digest.update(f"\0{path.name}\0".encode() + path.read_bytes())
    return "sha256:" + digest.hexdigest()


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocessing:
    """How a checkpoint wants its pixels: resize, optional centre crop, rescale, normalise."""

    do_resize: bool
    #: {"height", "width"} or {"shortest_edge"}.
    size: dict[str, int]
    resample: int
    do_center_crop: bool
    crop_size: dict[str, int] | None
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    #: True when the checkpoint had no preprocessor_config.json and ViT defaults are used.
    defaulted: bool = False

    @property
    def input_size(self) -> tuple[int, int]:
        """The (height, width) the model receives."""
        if self.do_center_crop and self.crop_size:
            return self.crop_size["height"], self.crop_size["width"]
        if "height" in self.size:
            return self.size["height"], self.size["width"]
        edge = self.size["shortest_edge"]
        return edge, edge

    def to_record(self) -> dict[str, Any]:
        """JSON-ready description recorded with each space (what makes vectors comparable)."""
        record: dict[str, Any] = {
            "do_resize": self.do_resize,
            "size": dict(self.size),
            "resample": self.resample,
            "do_center_crop": self.do_center_crop,
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            # Photos are decoded with JPEG draft (DCT-scaled) decoding before the resize.
            "draft": True,
        }
        if self.do_center_crop and self.crop_size:
            record["crop_size"] = dict(self.crop_size)
        return record


def _triple(value: Any, default: float) -> tuple[float, float, float]:
    if value is None:
        return (default, default, default)
    if isinstance(value, int | float):
        return (float(value), float(value), float(value))
    values = [float(v) for v in value]
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise ValueError(f"expected 3 channel values, got {value!r}")
    return (values[0], values[1], values[2])


def _size_dict(value: Any, *, square: bool) -> dict[str, int]:
    if isinstance(value, int):
        # Old feature-extractor configs give one number; ViT's processor reads it as a square.
        return {"height": value, "width": value} if square else {"shortest_edge": value}
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return {"height": int(value["height"]), "width": int(value["width"])}
        if "shortest_edge" in value:
            return {"shortest_edge": int(value["shortest_edge"])}
    raise ValueError(f"unsupported size {value!r}")


def read_preprocessing(folder: Path, image_size: int) -> Preprocessing:
    """Read ``preprocessor_config.json`` from a checkpoint folder.

    Without one, ViT's defaults at the model's ``image_size`` are used (and logged).
    Raises ``ValueError`` for a file vitdex cannot follow.
    """
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        log.warning(
            "%s has no preprocessor_config.json; using ViT defaults: resize to %dx%d "
            "bilinear, rescale 1/255, normalise mean=std=0.5",
            folder,
            image_size,
            image_size,
        )
        return Preprocessing(
            do_resize=True,
            size={"height": image_size, "width": image_size},
            resample=2,
            do_center_crop=False,
            crop_size=None,
            do_rescale=True,
            rescale_factor=1 / 255,
            do_normalize=True,
            image_mean=(0.5, 0.5, 0.5),
            image_std=(0.5, 0.5, 0.5),
            defaulted=True,
        )
    raw: dict[str, Any] = json.loads(path.read_text())
    do_resize = bool(raw.get("do_resize", True))
    size = _size_dict(raw.get("size", image_size), square=True)
    do_center_crop = bool(raw.get("do_center_crop", False))
    crop_size = (
        _size_dict(raw.get("crop_size", image_size), square=True) if do_center_crop else None
    )
    if "shortest_edge" in size and not do_center_crop:
        # Aspect-preserving resizes give each photo its own shape, which a ViT batch cannot
        # hold; crop the centre to the model's square, as most such checkpoints do.
        log.warning(
            "%s resizes by shortest edge without a crop; centre-cropping to %dx%d",
            folder,
            image_size,
            image_size,
        )
        do_center_crop = True
        crop_size = {"height": image_size, "width": image_size}
    resample = raw.get("resample", 2)
    resample = 2 if resample is None else int(resample)
    if resample not in range(6):  # PIL's NEAREST..LANCZOS codes
        raise ValueError(f"unsupported resample {resample!r}")
    return Preprocessing(
        do_resize=do_resize,
        size=size,
        resample=resample,
        do_center_crop=do_center_crop,
        crop_size=crop_size,
        do_rescale=bool(raw.get("do_rescale", True)),
        rescale_factor=float(raw.get("rescale_factor", 1 / 255)),
        do_normalize=bool(raw.get("do_normalize", True)),
        image_mean=_triple(raw.get("image_mean"), 0.5),
        image_std=_triple(raw.get("image_std"), 0.5),
    )
