"""Spaces: which layer specs a model embeds into, and what makes their vectors comparable.

A layer spec (``cls``, ``mean@K``, ``cls@P/Q``; parsed by
:func:`vitdex.config.parse_layer_spec`) is resolved against the model's depth to a
hidden-state index. A relative depth ``P/Q`` becomes layer ``round(P/Q · layers)``, halves
rounded up and at least layer 1, and the space takes its resolved name: ``cls@2/3`` is
the space ``cls@8`` on the 12 layers of ViT-B/16 and ``cls@3`` on a 4-layer ViT. Every
other spec names its space as written. So the catalog never holds a space whose layer
depends on the model, and a catalog built with ``cls@8`` keeps its space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from vitdex.config import ModelSettings, parse_layer_spec
from vitdex.errors import ConfigError
from vitdex.indexer.models import local_layer_count, normalize_model_id

__all__ = [
    "ResolvedSpace",
    "SpaceSpec",
    "configured_spaces",
    "describe_configured",
    "resolve_spaces",
]


@dataclass(frozen=True)
class SpaceSpec:
    """Everything that makes vectors comparable: model, revision, layer, preprocessing."""

    name: str
    layer: str
    model_id: str
    model_revision: str
    preprocessing: dict[str, Any]
    dim: int
    metric: str = "ip"


@dataclass(frozen=True)
class ResolvedSpace:
    """One layer spec resolved against a model's depth."""

    #: The layer spec as configured (``cls@2/3``).
    spec: str
    #: The space it fills, in the catalog and the stores (``cls@8``).
    name: str
    pooling: str
    #: Hidden-state index, 0 (patch embeddings) .. the layer count; ``None`` for the
    #: final, layer-normed output.
    layer: int | None


def _depth_layer(depth: Fraction, num_layers: int) -> int:
    # Half up, not Python's round-half-even: the same spec picks the same layer for
    # every reader of the docs, and at least layer 1 so it is a transformer layer.
    return max(1, math.floor(depth * num_layers + Fraction(1, 2)))


def resolve_spaces(specs: Sequence[str], num_layers: int) -> list[ResolvedSpace]:
    """Resolve layer specs for a model with ``num_layers`` layers, in order, one per space
    (a relative depth that lands on a layer also given as ``cls@K`` fills that space once).

    Raises :class:`ConfigError` naming the layer count when an index is out of range.
    """
    resolved: list[ResolvedSpace] = []
    for spec in specs:
        pooling, layer = parse_layer_spec(spec)
        name = spec.strip()
        index: int | None
        if isinstance(layer, Fraction):
            index = _depth_layer(layer, num_layers)
            name = f"{pooling}@{index}"
        elif layer is not None:
            if not -(num_layers + 1) <= layer <= num_layers:
                raise ConfigError(
                    f"layer spec {name!r} is out of range: the model has {num_layers} "
                    f"layers, so K must be 0..{num_layers} (0 = patch embeddings) or "
                    f"-{num_layers + 1}..-1 (counted from the end)"
                )
            index = layer % (num_layers + 1)
        else:
            index = None
        if all(r.name != name for r in resolved):
            resolved.append(ResolvedSpace(spec.strip(), name, pooling, index))
    return resolved


def configured_spaces(
    model: str, revision: str | None, specs: Sequence[str]
) -> list[ResolvedSpace] | None:
    """``specs`` resolved against ``model``'s config.json on this machine, without loading
    weights or downloading anything; ``None`` when the checkpoint is not here (yet).

    Raises :class:`ConfigError` when a spec does not fit the model.
    """
    num_layers = local_layer_count(normalize_model_id(model), revision)
    return None if num_layers is None else resolve_spaces(specs, num_layers)


def describe_configured(settings: ModelSettings) -> dict[str, Any]:
    """What each configured layer spec resolves to, for ``vitdex status``: the model's
    layer count (``None`` while its checkpoint is not on this machine) and per spec the
    space it fills and its hidden-state index (``None``: the final, layer-normed output),
    or the problem that keeps it from resolving."""
    entries: list[dict[str, Any]] = [
        {"spec": spec, "space": None, "layer": None, "error": None} for spec in settings.spaces
    ]
    num_layers = local_layer_count(normalize_model_id(settings.model), settings.model_revision)
    for entry in entries:
        if num_layers is None:
            entry["error"] = "no ViT config.json of the model on this machine (yet)"
            continue
        try:
            [found] = resolve_spaces([entry["spec"]], num_layers)
        except ConfigError as exc:
            entry["error"] = exc.message
        else:
            entry.update(space=found.name, layer=found.layer)
    return {"num_layers": num_layers, "spaces": entries}
