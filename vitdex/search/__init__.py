"""Vector stores (one per space) and the search built on them.

Names are imported on first use, so importing the contract (``vitdex.search.store``)
does not load FAISS or Qdrant.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FaissStore": "vitdex.search.faiss_store",
    "QdrantStore": "vitdex.search.qdrant_store",
    "SearchFilter": "vitdex.search.store",
    "SearchHit": "vitdex.search.store",
    "VectorNotFoundError": "vitdex.search.store",
    "VectorStore": "vitdex.search.store",
    "image_payload": "vitdex.search.store",
    "compare": "vitdex.search.store",
    "sanitize_space_name": "vitdex.search.store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
