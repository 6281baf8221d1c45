"""Searching the vector stores: the search service (bytes or ids in, one hit type out),
batching of concurrent queries, and clustering.

Names are imported on first use, so importing the package loads neither torch nor FAISS.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SearchService": "vitdex.search.service",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
