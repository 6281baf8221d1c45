"""The Qdrant collection of one space: its layout, created once, checked at every opening.

A collection is created with the layout the settings ask for (vector size and distance,
HNSW, int8 quantization, shards, replicas, write consistency, on-disk vectors) and the
payload indexes filters use. Everything but the payload indexes is fixed at creation:
an existing collection keeps its own, and is only checked to hold this space's vectors.

Vectors are L2-normalised, so the ``"ip"`` metric uses ``Distance.DOT``: scores equal
FAISS inner products, and Qdrant does not rewrite the stored vectors (``COSINE`` would
normalise them again, so a round trip would no longer be bit-identical).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from qdrant_client import models

from vitdex.errors import SpaceMismatchError, StoreError
from vitdex.vectors.qdrant.connection import Connection
from vitdex.vectors.qdrant.payloads import PAYLOAD_INDEXES

__all__ = ["DISTANCES", "CollectionLayout", "hnsw_settings", "open_collection"]

DISTANCES = {"ip": models.Distance.DOT, "l2": models.Distance.EUCLID}


@dataclass(frozen=True)
class CollectionLayout:
    """What a new collection is created with (``None``: Qdrant's default)."""

    dim: int
    metric: str = "ip"
    hnsw_m: int | None = None
    hnsw_ef_construct: int | None = None
    quantization: str | None = None
    shards: int | None = None
    replicas: int | None = None
    write_consistency: int | None = None
    on_disk: bool = False

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ValueError(f"dim must be positive, got {self.dim}")
        if self.metric not in DISTANCES:
            raise ValueError(f"metric must be one of {sorted(DISTANCES)}, got {self.metric!r}")
        if self.quantization not in (None, "int8"):
            raise ValueError(f"quantization must be None or 'int8', got {self.quantization!r}")
        for name, value in (
            ("shards", self.shards),
            ("replicas", self.replicas),
            ("write_consistency", self.write_consistency),
        ):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.write_consistency is not None and self.write_consistency > (self.replicas or 1):
            raise ValueError(
                f"write_consistency {self.write_consistency} exceeds the {self.replicas or 1} "
                "replica(s) a write can reach"
            )

    @property
    def distance(self) -> models.Distance:
        """Qdrant's distance for the metric."""
        return DISTANCES[self.metric]

    def hnsw_config(self) -> models.HnswConfigDiff | None:
        """The HNSW settings asked for, or None for Qdrant's defaults."""
        if self.hnsw_m is None and self.hnsw_ef_construct is None:
            return None
        return models.HnswConfigDiff(m=self.hnsw_m, ef_construct=self.hnsw_ef_construct)

    def quantization_config(self) -> models.ScalarQuantization | None:
        """int8 scalar quantization kept in RAM, or None for raw vectors only."""
        if self.quantization != "int8":
            return None
        return models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(
                type=models.ScalarType.INT8, quantile=0.99, always_ram=True
            )
        )


def open_collection(connection: Connection, layout: CollectionLayout) -> bool:
    """Create the collection of ``connection`` with ``layout``, or check the existing one
    holds vectors of its dim and distance; add any missing payload index. Returns whether
    the collection's vectors are quantized."""
    name = connection.collection
    call = connection.call
    client = connection.client()
    if not call("open", client.collection_exists, collection_name=name):
        try:
            call(
                "create collection",
                client.create_collection,
                collection_name=name,
                vectors_config=models.VectorParams(
                    size=layout.dim, distance=layout.distance, on_disk=layout.on_disk or None
                ),
                hnsw_config=layout.hnsw_config(),
                quantization_config=layout.quantization_config(),
                # Fixed at creation: an existing collection keeps its own layout.
                shard_number=layout.shards,
                replication_factor=layout.replicas,
                write_consistency_factor=layout.write_consistency,
            )
        except StoreError:
            # Another process may have created it first; checking it below decides.
            if not call("open", client.collection_exists, collection_name=name):
                raise
    info = call("open", client.get_collection, collection_name=name)
    _check_space(info, name, layout)
    missing = [field for field in PAYLOAD_INDEXES if field not in info.payload_schema]
    with warnings.catch_warnings():
        # Local mode keeps no payload indexes and warns once that they do nothing.
        warnings.simplefilter("ignore", UserWarning)
        for field in missing:
            call(
                "create payload index",
                client.create_payload_index,
                collection_name=name,
                field_name=field,
                field_schema=PAYLOAD_INDEXES[field],
                wait=True,
            )
    return _is_quantized(info)


def hnsw_settings(info: models.CollectionInfo) -> tuple[int | None, int | None]:
    """The collection's HNSW ``m`` and ``ef_construct`` (a per-vector config overrides
    the collection's)."""
    hnsw = info.config.hnsw_config
    m, ef_construct = hnsw.m, hnsw.ef_construct
    params = info.config.params.vectors
    if isinstance(params, models.VectorParams) and params.hnsw_config is not None:
        override = params.hnsw_config
        m = m if override.m is None else override.m
        ef_construct = ef_construct if override.ef_construct is None else override.ef_construct
    return m, ef_construct


def _check_space(info: models.CollectionInfo, name: str, layout: CollectionLayout) -> None:
    params = info.config.params.vectors
    if not isinstance(params, models.VectorParams):
        raise SpaceMismatchError(
            f"the Qdrant collection {name!r} holds named vectors "
            f"({', '.join(sorted(params or {}))}), not a vitdex space"
        )
    wanted = layout.distance
    differences = [
        f"{what} {have!r} in Qdrant, {want!r} asked for"
        for what, have, want in (
            ("dim", params.size, layout.dim),
            ("distance", str(params.distance.value), str(wanted.value)),
        )
        if have != want
    ]
    if differences:
        raise SpaceMismatchError(
            f"the Qdrant collection {name!r} was built for another space "
            f"({'; '.join(differences)}). Re-embed into a new space, or drop the "
            "collection to rebuild it."
        )


def _is_quantized(info: models.CollectionInfo) -> bool:
    params = info.config.params.vectors
    per_vector = params.quantization_config if isinstance(params, models.VectorParams) else None
    return (per_vector or info.config.quantization_config) is not None
