"""ViT checkpoints on disk: finding them (folder or hub), fingerprinting them, and reading
their depth without loading them.

Everything here works on files; nothing imports torch at module level, so the CLI can
answer ``--help`` without it. How a checkpoint wants its pixels is
:mod:`vitdex.indexer.preprocessing`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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
    "Checkpoint",
    "folder_fingerprint",
    "hub_endpoint",
    "load_error",
    "load_help",
    "local_layer_count",
    "locate_checkpoint",
    "normalize_model_id",
    "quiet_progress",
]

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
#: ViTConfig's ``num_hidden_layers`` when a config.json leaves it out.
_VIT_DEFAULT_LAYERS = 12


def load_help() -> str:
    """The fix that every :class:`ModelLoadError` message ends with."""
    return (
        "To fix it, point VITDEX_MODEL at a local folder containing config.json, "
        "model.safetensors and preprocessor_config.json (for example one written by "
        "`save_pretrained`), or download the model once with network access and "
        "HF_HUB_OFFLINE unset (later runs read it from the Hugging Face cache)."
    )


def load_error(model: str, what: str) -> ModelLoadError:
    """The error for a model that cannot be loaded: ``what`` went wrong, and the fix."""
    return ModelLoadError(f"cannot load the ViT model {model!r}: {what}. {load_help()}")


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


def hub_offline() -> bool:
    """Whether Hugging Face's offline switch is on (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE).

    Hugging Face's own variable, not a vitdex setting; read at call time because
    huggingface_hub reads it once, at import.
    """
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    return False


def hub_endpoint() -> str:
    """The Hugging Face endpoint URL that downloads would use."""
    from huggingface_hub import constants

    return str(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)


def hub_reachable(endpoint: str, timeout: float = _PROBE_TIMEOUT_S) -> bool:
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
        raise load_error(model, f"the folder {folder} has no config.json")
    if not any((folder / name).is_file() for name in _WEIGHT_NAMES):
        found = sorted(p.name for p in folder.glob("*.bin")) + sorted(
            p.name for p in folder.glob("*.pt*")
        )
        hint = f" (found {', '.join(found)}; only safetensors weights are loaded)" if found else ""
        raise load_error(model, f"the folder {folder} has no model.safetensors{hint}")


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
        raise load_error(model, "no model was given")
    path = Path(model).expanduser()
    if path.exists() or _looks_like_path(model):
        path = path.resolve()
        if not path.exists():
            raise load_error(model, f"the folder {path} does not exist")
        if not path.is_dir():
            raise load_error(model, f"{path} is a file, not a checkpoint folder")
        _check_folder(model, path)
        return Checkpoint(str(path), path, _snapshot_revision(path) or revision, from_hub=False)
    return _from_hub(model, revision)


def local_layer_count(model: str, revision: str | None = None) -> int | None:
    """How many transformer layers the ViT ``model`` has, from its config.json on this
    machine (its folder, or the Hugging Face cache); ``None`` when there is none or it is
    not a ViT's.

    Never downloads and never loads weights: layer specs with a relative depth are named
    from it before the model loads (the indexer's start-up) or without loading it at all
    (``vitdex status``, ``vitdex doctor``).
    """
    model = model.strip()
    path = Path(model).expanduser()
    if not model:
        return None
    if path.exists() or _looks_like_path(model):
        config = path.resolve() / "config.json"
    else:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json", revision=revision)
        if not isinstance(cached, str):  # not cached, or cached as known to be absent
            return None
        config = Path(cached)
    try:
        raw = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("model_type") != "vit":
        return None
    layers = raw.get("num_hidden_layers", _VIT_DEFAULT_LAYERS)
    return layers if isinstance(layers, int) and layers > 0 else None


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
    if hub_offline():
        raise load_error(
            model,
            f"{label} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set "
            f"({type(cached_error).__name__}){also}",
        )
    endpoint = hub_endpoint()
    if not hub_reachable(endpoint):
        raise load_error(
            model,
            f"{label} is not in the local Hugging Face cache and {endpoint} cannot be reached "
            f"(no network?){also}",
        )
    try:
        folder = fetch(local_only=False)
    except Exception as exc:
        raise load_error(
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
