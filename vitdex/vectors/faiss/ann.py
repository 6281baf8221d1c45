"""Approximate-index specs for the FAISS store: parsing, building and search parameters.

A spec is a short string a user can put in a config file or on a command line::

    flat                                            exact search (the default)
    hnsw | hnsw:M=32,efConstruction=200,efSearch=128
    ivf  | ivf:nlist=1024,nprobe=32,code=flat|sq8|pq,pq_m=64,rerank=1

``rerank`` (sq8/pq only) re-scores ``k * rerank`` candidates exactly on the raw vectors,
so that scores are exact similarities; ``rerank=0`` keeps the codes' approximate scores.

The approximate index is always *derived*: it is built from the raw vectors the store
keeps exactly, so it can be dropped, rebuilt or switched without re-embedding a photo.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from vitdex.errors import ConfigError

__all__ = [
    "IndexSpec",
    "IndexSpecError",
    "build_index",
    "code_bytes_per_vector",
    "factory_string",
    "ivf_nlist",
    "parse_index_spec",
    "search_parameters",
    "training_shortfall",
]

#: FAISS's k-means wants about this many training points per centroid.
MIN_POINTS_PER_CENTROID = 39
#: Training points per centroid actually used: more costs time and buys little.
TRAIN_POINTS_PER_CENTROID = 64
#: A PQ sub-quantizer has 2**8 centroids, so it needs at least that many points.
PQ_MIN_TRAIN = 256
_CODES = ("flat", "sq8", "pq")
_KINDS = ("flat", "hnsw", "ivf")
_PARAMS: dict[str, dict[str, str]] = {
    # spec key -> field name, per kind
    "flat": {},
    "hnsw": {"M": "m", "efConstruction": "ef_construction", "efSearch": "ef_search"},
    "ivf": {
        "nlist": "nlist",
        "nprobe": "nprobe",
        "code": "code",
        "pq_m": "pq_m",
        "rerank": "rerank",
    },
}
# Chunk size for adding vectors: bounds the temporary copies made while building.
_ADD_CHUNK = 65536


class IndexSpecError(ConfigError, ValueError):
    """An index spec that cannot be parsed or built (both a config and a value error)."""


@dataclass(frozen=True)
class IndexSpec:
    """A parsed index spec; ``None`` for a size that is picked from the data."""

    kind: str = "flat"
    m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    nlist: int | None = None
    nprobe: int = 32
    code: str = "flat"
    pq_m: int | None = None
    #: For sq8/pq: fetch ``k * rerank`` candidates and re-score them exactly on the raw
    #: vectors (1: only re-score and re-sort the ``k`` hits; 0: no re-scoring, the
    #: scores are the codes' approximations of the similarity).
    rerank: int = 1

    @property
    def exact(self) -> bool:
        """Whether this spec means exact search over the raw vectors (no derived index)."""
        return self.kind == "flat"

    @property
    def tag(self) -> str:
        """A short file-name-safe name of the index family (``hnsw``, ``ivf_pq``...)."""
        return self.kind if self.kind != "ivf" else f"ivf_{self.code}"

    @property
    def approximate_scores(self) -> bool:
        """Whether the index's own scores are approximations (compressed codes)."""
        return self.kind == "ivf" and self.code != "flat"

    @property
    def rescored(self) -> bool:
        """Whether searches re-score the index's candidates exactly on the raw vectors."""
        return self.approximate_scores and self.rerank > 0

    def canonical(self) -> str:
        """The spec written out in full; parsing it gives back an equal spec."""
        if self.kind == "flat":
            return "flat"
        if self.kind == "hnsw":
            return (
                f"hnsw:M={self.m},efConstruction={self.ef_construction},efSearch={self.ef_search}"
            )
        parts = [
            f"nlist={'auto' if self.nlist is None else self.nlist}",
            f"nprobe={self.nprobe}",
            f"code={self.code}",
        ]
        if self.code == "pq":
            parts.append(f"pq_m={'auto' if self.pq_m is None else self.pq_m}")
        if self.code != "flat":
            parts.append(f"rerank={self.rerank}")
        return "ivf:" + ",".join(parts)


def parse_index_spec(text: str) -> IndexSpec:
    """Parse ``flat``, ``hnsw[:key=value,...]`` or ``ivf[:key=value,...]``.

    Raises :class:`IndexSpecError` (a ``ValueError`` and a ``ConfigError``) naming what
    is wrong and what is accepted.
    """
    if not isinstance(text, str) or not text.strip():
        raise IndexSpecError("an index spec cannot be empty: use 'flat', 'hnsw' or 'ivf'")
    kind, _, rest = text.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in _KINDS:
        raise IndexSpecError(
            f"unknown index type {kind!r} in {text!r}: use 'flat', 'hnsw[:M=32,"
            "efConstruction=200,efSearch=128]' or 'ivf[:nlist=1024,nprobe=32,"
            "code=flat|sq8|pq,pq_m=64]'"
        )
    allowed = _PARAMS[kind]
    values: dict[str, Any] = {}
    if rest.strip():
        for item in rest.split(","):
            key, eq, raw = item.partition("=")
            key, raw = key.strip(), raw.strip()
            if not eq or not key or not raw:
                raise IndexSpecError(f"{item.strip()!r} in {text!r} is not key=value")
            if key not in allowed:
                known = ", ".join(allowed) or "none"
                raise IndexSpecError(f"{kind} takes no {key!r} (in {text!r}); it takes: {known}")
            field = allowed[key]
            if field in values:
                raise IndexSpecError(f"{key!r} is given twice in {text!r}")
            values[field] = _value(field, key, raw, text)
    spec = IndexSpec(kind=kind, **values)
    if spec.code != "pq" and "pq_m" in values:
        raise IndexSpecError(f"pq_m applies to code=pq only (in {text!r})")
    return spec


def _value(field: str, key: str, raw: str, text: str) -> Any:
    if field == "code":
        if raw.lower() not in _CODES:
            raise IndexSpecError(
                f"code must be one of {', '.join(_CODES)}, got {raw!r} in {text!r}"
            )
        return raw.lower()
    if field in ("nlist", "pq_m") and raw.lower() == "auto":
        return None
    try:
        number = int(raw)
    except ValueError:
        raise IndexSpecError(f"{key} must be a whole number, got {raw!r} in {text!r}") from None
    least = 0 if field == "rerank" else 1  # rerank=0: no exact re-scoring
    if number < least:
        raise IndexSpecError(f"{key} must be at least {least}, got {number} in {text!r}")
    if field == "m" and number > 256:
        raise IndexSpecError(f"M above 256 only costs memory (got {number} in {text!r})")
    return number


def ivf_nlist(spec: IndexSpec, n: int) -> int:
    """The number of IVF lists for ``n`` vectors: the spec's, or about 4·sqrt(n).

    The automatic choice is capped so that k-means has enough points per list.
    """
    if spec.nlist is not None:
        return spec.nlist
    return max(1, min(round(4 * math.sqrt(max(n, 1))), n // MIN_POINTS_PER_CENTROID))


def _pq_m(spec: IndexSpec, dim: int) -> int:
    if spec.pq_m is not None:
        if dim % spec.pq_m:
            raise IndexSpecError(f"pq_m={spec.pq_m} must divide the vector dim {dim}")
        return spec.pq_m
    # About 8 dimensions per sub-quantizer: 768-d -> 96 bytes, 64-d -> 8 bytes a vector.
    return max(m for m in range(1, max(1, dim // 8) + 1) if dim % m == 0)


def training_shortfall(spec: IndexSpec, n: int, dim: int) -> str | None:
    """Why ``n`` vectors cannot train this index yet, or ``None`` when they can."""
    if spec.kind != "ivf":
        return None
    nlist = ivf_nlist(spec, n)
    need = MIN_POINTS_PER_CENTROID * nlist
    if spec.code == "pq":
        _pq_m(spec, dim)  # a pq_m that cannot work is an error now, not a fallback
        need = max(need, PQ_MIN_TRAIN)
    if n < need:
        return (
            f"{spec.canonical()} needs at least {need} vectors to train "
            f"(nlist={nlist}), the store holds {n}; searching exactly until a rebuild "
            "finds enough"
        )
    return None


def factory_string(spec: IndexSpec, n: int, dim: int) -> str:
    """The index in ``faiss.index_factory`` terms, as built for ``n`` vectors."""
    if spec.kind == "flat":
        return "IDMap2,Flat"
    if spec.kind == "hnsw":
        return f"IDMap,HNSW{spec.m},Flat"
    # "np": no polysemous training, a slow annealing step only polysemous search uses.
    code = {"flat": "Flat", "sq8": "SQ8"}.get(spec.code) or f"PQ{_pq_m(spec, dim)}np"
    return f"IVF{ivf_nlist(spec, n)},{code}"


def build_index(
    spec: IndexSpec,
    ids: npt.NDArray[np.int64],
    vectors: npt.NDArray[np.float32],
    metric: int,
    progress: Callable[[str, float], None] | None = None,
) -> faiss.Index:
    """Train (when needed) and fill the index of ``spec`` with ``vectors`` under ``ids``.

    ``vectors`` may be a read-only view; it is read in chunks and never modified.
    ``progress(stage, fraction)`` is called as the build advances. Raises
    :class:`IndexSpecError` when the data cannot train the index.
    """
    if spec.kind == "flat":
        raise IndexSpecError("flat needs no derived index: search the raw vectors")
    n, dim = vectors.shape
    shortfall = training_shortfall(spec, n, dim)
    if shortfall is not None:
        raise IndexSpecError(shortfall)
    report = progress or _no_progress
    index: faiss.Index
    if spec.kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, spec.m, metric)
        hnsw.hnsw.efConstruction = spec.ef_construction
        hnsw.hnsw.efSearch = spec.ef_search
        # HNSW keeps sequential labels only: the id map turns them into SQL ids.
        index = faiss.IndexIDMap(hnsw)
    else:
        index = faiss.index_factory(dim, factory_string(spec, n, dim), metric)
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = spec.nprobe
        nlist = ivf_nlist(spec, n)
        sample = min(n, max(TRAIN_POINTS_PER_CENTROID * nlist, PQ_MIN_TRAIN * 40))
        rows = np.sort(np.random.default_rng(0).choice(n, size=sample, replace=False))
        report("train", 0.0)
        index.train(np.ascontiguousarray(vectors[rows], dtype=np.float32))
        report("train", 1.0)
    for lo in range(0, n, _ADD_CHUNK):
        hi = min(n, lo + _ADD_CHUNK)
        index.add_with_ids(
            np.ascontiguousarray(vectors[lo:hi], dtype=np.float32),
            np.ascontiguousarray(ids[lo:hi], dtype=np.int64),
        )
        report("add", hi / n)
    return index


def _no_progress(stage: str, fraction: float) -> None:
    del stage, fraction


def search_parameters(
    spec: IndexSpec, k: int, selector: faiss.IDSelector | None
) -> faiss.SearchParameters:
    """Search-time knobs of ``spec`` (efSearch, nprobe) plus an optional id selector."""
    params: faiss.SearchParameters
    if spec.kind == "hnsw":
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        # efSearch below k cannot return k results.
        params.efSearch = max(spec.ef_search, k)  # type: ignore[attr-defined]
    elif spec.kind == "ivf":
        params = faiss.SearchParametersIVF()
        params.nprobe = spec.nprobe
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        params.sel = selector
    return params


def code_bytes_per_vector(index: faiss.Index) -> float:
    """Bytes the index keeps in memory per vector (codes, plus graph links for HNSW)."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if isinstance(inner, faiss.IndexHNSW):
        storage = faiss.downcast_index(inner.storage)
        # Level-0 links are 2*M int32; the upper levels add about 1/(M-1) of that again.
        graph: Any = inner.hnsw
        m = int(graph.nb_neighbors(1))
        links = 4 * int(graph.nb_neighbors(0)) * (1 + 1 / max(1, m - 1))
        return float(storage.sa_code_size()) + links + 8  # + the id map
    ivf = faiss.extract_index_ivf(inner)
    return float(ivf.code_size) + 8  # codes + the id stored beside each in its list


def with_nlist(spec: IndexSpec, n: int) -> IndexSpec:
    """``spec`` with the automatic nlist resolved for ``n`` vectors (for display)."""
    if spec.kind != "ivf" or spec.nlist is not None:
        return spec
    return replace(spec, nlist=ivf_nlist(spec, n))
