"""The Qdrant backend: a local folder or a server (or cluster), one collection a space."""

from vitdex.vectors.qdrant.payloads import search_filter_to_qdrant
from vitdex.vectors.qdrant.store import EXACT_BELOW, QdrantStore

__all__ = ["EXACT_BELOW", "QdrantStore", "search_filter_to_qdrant"]
