"""The one place that picks a vector-store backend from the settings."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from vitdex.config import Settings
from vitdex.vectors.store import VectorStore, sanitize_space_name

if TYPE_CHECKING:
    from vitdex.vectors.qdrant.store import QdrantStore


def store_folder(settings: Settings, space: str) -> Path:
    """Where the FAISS files of ``space`` live."""
    return settings.storage.home / "faiss" / sanitize_space_name(space)


def open_store(
    settings: Settings,
    space: str,
    dim: int,
    metric: str = "ip",
    *,
    backend: str | None = None,
) -> VectorStore:
    """Open (lazily) the vector store of one space on the configured backend.

    ``backend`` overrides VITDEX_VECTOR_BACKEND (``vitdex migrate-store`` opens both).
    """
    chosen = backend or settings.vectors.vector_backend
    if chosen == "qdrant":
        return _qdrant_store(settings, space, dim, metric)
    from vitdex.vectors.faiss.store import FaissStore

    return FaissStore(
        store_folder(settings, space),
        space,
        dim,
        metric=metric,
        search_threads=settings.vectors.search_threads,
    )


def drop_store(settings: Settings, space: str, *, backend: str | None = None) -> None:
    """Delete every stored vector of ``space`` (before re-embedding it from scratch)."""
    chosen = backend or settings.vectors.vector_backend
    if chosen == "qdrant":
        store = _qdrant_store(settings, space, 1)
        store.drop()
        store.close()
        return
    folder = store_folder(settings, space)
    if folder.exists():
        shutil.rmtree(folder)


def check_ready(settings: Settings) -> None:
    """Raise unless the configured backend can take writes now: a Qdrant server answers
    its readiness probe, or the folder FAISS (or Qdrant's local mode) writes is writable."""
    v = settings.vectors
    if v.vector_backend == "qdrant" and v.qdrant_url:
        import httpx

        headers = {"api-key": v.qdrant_api_key} if v.qdrant_api_key else {}
        reply = httpx.get(f"{v.qdrant_url.rstrip('/')}/readyz", headers=headers, timeout=3)
        reply.raise_for_status()
        return
    folder = (
        (v.qdrant_path or settings.storage.home / "qdrant")
        if v.vector_backend == "qdrant"
        else settings.storage.home / "faiss"
    )
    # The folder may not exist yet: the nearest existing ancestor must let us create it.
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OSError(f"{folder} is not a writable folder")


def _qdrant_store(settings: Settings, space: str, dim: int, metric: str = "ip") -> QdrantStore:
    # Imported here: opening a FAISS store loads no Qdrant client.
    from vitdex.vectors.qdrant.store import QdrantStore

    v = settings.vectors
    return QdrantStore(
        space,
        dim,
        metric=metric,
        url=v.qdrant_url,
        api_key=v.qdrant_api_key,
        path=None if v.qdrant_url else (v.qdrant_path or settings.storage.home / "qdrant"),
        collection_prefix=v.qdrant_collection_prefix,
        hnsw_m=v.qdrant_hnsw_m,
        hnsw_ef_construct=v.qdrant_hnsw_ef_construct,
        search_ef=v.qdrant_search_ef,
        quantization=v.qdrant_quantization,
        shards=v.qdrant_shards,
        replicas=v.qdrant_replicas,
        write_consistency=v.qdrant_write_consistency,
        on_disk=v.qdrant_on_disk,
    )
