"""Vector stores, one per space: the contract, the one backend factory, FAISS and Qdrant.

Names are imported on first use, so importing the contract (``vitdex.vectors.store``)
loads neither FAISS nor Qdrant.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FaissStore": "vitdex.vectors.faiss",
    "QdrantStore": "vitdex.vectors.qdrant",
    "SearchFilter": "vitdex.filters",
    "SearchHit": "vitdex.vectors.store",
    "VectorNotFoundError": "vitdex.vectors.store",
    "VectorStore": "vitdex.vectors.store",
    "image_payload": "vitdex.filters",
    "compare": "vitdex.vectors.store",
    "open_store": "vitdex.vectors.factory",
    "sanitize_space_name": "vitdex.vectors.store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
