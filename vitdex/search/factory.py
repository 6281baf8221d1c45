"""The one place that picks a vector-store backend from the settings."""

from __future__ import annotations

import shutil
from pathlib import Path

from vitdex.config import Settings
from vitdex.search.store import VectorStore, sanitize_space_name


def store_folder(settings: Settings, space: str) -> Path:
    """Where the FAISS files of ``space`` live."""
    return settings.storage.home / "faiss" / sanitize_space_name(space)


def open_store(settings: Settings, space: str, dim: int, metric: str = "ip") -> VectorStore:
    """Open (lazily) the vector store of one space."""
    from vitdex.search.faiss_store import FaissStore

    return FaissStore(store_folder(settings, space), space, dim, metric=metric)


def drop_store(settings: Settings, space: str) -> None:
    """Delete every stored vector of ``space`` (before re-embedding it from scratch)."""
    folder = store_folder(settings, space)
    if folder.exists():
        shutil.rmtree(folder)
