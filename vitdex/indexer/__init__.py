"""Reading photo folders into the catalog and the vector stores.

Names are imported on first use, so the decoder can be used without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SUPPORTED_EXTENSIONS": "vitdex.indexer.images",
    "DecodedImage": "vitdex.indexer.images",
    "ExifInfo": "vitdex.indexer.images",
    "decode_image": "vitdex.indexer.images",
    "EmbedResult": "vitdex.indexer.embedder",
    "Embedder": "vitdex.indexer.embedder",
    "ResolvedSpace": "vitdex.indexer.spaces",
    "SpaceSpec": "vitdex.indexer.spaces",
    "IndexReport": "vitdex.indexer.report",
    "Indexer": "vitdex.indexer.pipeline",
    "ProgressSink": "vitdex.indexer.report",
    "ScannedFile": "vitdex.indexer.scan",
    "scan": "vitdex.indexer.scan",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
