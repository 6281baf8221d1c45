"""Reading photo folders into the catalog and the vector stores."""

from vitdex.indexer.embedder import Embedder, EmbedResult, SpaceSpec
from vitdex.indexer.images import SUPPORTED_EXTENSIONS, DecodedImage, ExifInfo, decode_image
from vitdex.indexer.pipeline import Indexer, IndexReport, ProgressSink
from vitdex.indexer.scan import ScannedFile, scan

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "DecodedImage",
    "EmbedResult",
    "Embedder",
    "ExifInfo",
    "IndexReport",
    "Indexer",
    "ProgressSink",
    "ScannedFile",
    "SpaceSpec",
    "decode_image",
    "scan",
]
