"""The in-process FAISS backend: exact vectors on disk, an optional approximate index."""

from vitdex.vectors.faiss.store import FaissStore

__all__ = ["FaissStore"]
