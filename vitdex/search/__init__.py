"""Vector stores (one per space) and the search built on them."""

from vitdex.search.faiss_store import FaissStore
from vitdex.search.store import (
    SearchHit,
    VectorNotFoundError,
    VectorStore,
    reconcile,
    sanitize_space_name,
)

__all__ = [
    "FaissStore",
    "SearchHit",
    "VectorNotFoundError",
    "VectorStore",
    "reconcile",
    "sanitize_space_name",
]
