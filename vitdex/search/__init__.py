"""Searching the vector stores: the search service (bytes or ids in, one hit type out),
batching of concurrent queries, clustering, and the catalog reads of the API and pages.

Names are imported on first use, so importing the package loads neither torch nor FAISS.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Classification": "vitdex.search.results",
    "Hit": "vitdex.search.results",
    "LabelScore": "vitdex.search.results",
    "LabelledImage": "vitdex.search.catalog",
    "QueryResult": "vitdex.search.results",
    "SearchService": "vitdex.search.service",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
