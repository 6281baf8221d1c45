"""Bodies of the map routes: which maps exist, and one map's points."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vitdex.api.schemas.base import FromDict


@dataclass
class MapIn:
    """What to map: a space (the first configured one when left out) and a method.

    ``force`` computes the map again even when the cached one is fresh.
    """

    space: str | None = None
    method: Literal["pca", "umap"] = "pca"
    force: bool = False


@dataclass
class MapInfo(FromDict):
    """One (space, method) map: ``missing`` (never computed), ``stale`` (the space's
    vectors changed since: compute it again) or ``fresh``."""

    space: str
    method: str
    state: Literal["missing", "stale", "fresh"]
    #: Points in the cached map (None when there is none).
    points: int | None
    computed_at: str | None


@dataclass
class MapsOut:
    """Every space's maps, and the methods this server can compute."""

    methods: list[str]
    maps: list[MapInfo]


@dataclass
class MapPoints:
    """A fresh map's points as parallel arrays (compact: 100,000 points are a few MB).

    ``x`` and ``y`` are scaled into [0, 1] (the longer side spans it, the aspect is kept)
    and rounded to 4 decimals. Row i describes image ``ids[i]``.
    """

    space: str
    method: str
    computed_at: str
    ids: list[int]
    x: list[float]
    y: list[float]
    #: Index of each point's top label into ``label_names`` (-1: no label).
    label: list[int]
    #: Labels, most common first.
    label_names: list[str]
    library_id: list[int]
    #: With ``?cluster_run=``: each point's cluster label in that run (-1 is noise, null
    #: when the run did not include the image); null otherwise.
    cluster: list[int | None] | None
    cluster_run: int | None
