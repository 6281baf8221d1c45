"""The Qdrant backend: a local folder or a server (or cluster), one collection a space."""

from vitdex.vectors.qdrant.store import QdrantStore

__all__ = ["QdrantStore"]
