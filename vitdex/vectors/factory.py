"""The one place that picks a vector-store backend from the settings."""

from __future__ import annotations

import shutil
from pathlib import Path

from vitdex.config import Settings
from vitdex.vectors.store import VectorStore, sanitize_space_name


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
        store = open_store(settings, space, 1, backend="qdrant")
        drop = getattr(store, "drop", None)
        if drop is not None:
            drop()
        store.close()
        return
    folder = store_folder(settings, space)
    if folder.exists():
        shutil.rmtree(folder)
