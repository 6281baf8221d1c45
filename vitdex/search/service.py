"""Similar and classify queries over the catalog and the vector stores."""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import Settings
from vitdex.db import facets, repo
from vitdex.db.models import Image, ImageStatus, Space
from vitdex.errors import ConfigError, ImageError, NoClassifierError, NotFoundError
from vitdex.filters import FilterMiss, SearchFilter
from vitdex.indexer.embedder import Embedder
from vitdex.indexer.images import decode_image
from vitdex.indexer.repair import compare_space
from vitdex.search.batching import MicroBatcher, OneResult
from vitdex.search.examples import (
    DEFAULT_NEGATIVE_WEIGHT,
    Example,
    Query,
    check_negative_weight,
    combined_query,
    page_above,
)
from vitdex.search.results import (
    SCORE_PLACES,
    Classification,
    Hit,
    QueryResult,
    label_scores,
    photo_facts,
)
from vitdex.search.spaces import resolve_space
from vitdex.vectors.factory import open_store
from vitdex.vectors.store import SearchHit, VectorStore

log = logging.getLogger(__name__)


def search_filtered(
    session: Session,
    space: Space,
    store: VectorStore,
    queries: np.ndarray,
    k: int,
    filter: SearchFilter | None,
) -> list[list[SearchHit]]:
    """The ``k`` nearest of each query among the images ``filter`` allows: Qdrant filters
    on its own payload indexes, server side (camera make and model as the stored
    spellings they match ignoring case); FAISS searches exactly among the ids the filter
    selects in SQL, and so does Qdrant for a filter with tags or duplicate marks, which
    live only in the catalog."""
    if filter is None or filter.is_empty():
        return store.search(queries, k)
    if store.uses_payloads and not filter.sql_only:
        filter = facets.with_spellings(session, filter)
        if filter.camera_make_spellings == () or filter.camera_model_spellings == ():
            return [[] for _ in range(len(queries))]  # no photo has that make or model
        payload_store: Any = store
        hits: list[list[SearchHit]] = payload_store.search(queries, k, filter=filter)
        return hits
    allowed = np.asarray(repo.filter_image_ids(session, filter, space.id), np.int64)
    return store.search(queries, k, allowed_ids=allowed)


class SearchService:
    """Answers queries; loads the model only when a query needs embedding."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        embedder_factory: Callable[[Sequence[str]], Embedder] | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self._embedder_factory = embedder_factory or self._default_embedder
        self._embedder: Embedder | None = None
        self._batcher: MicroBatcher | None = None
        self._lock = threading.Lock()
        self._store_lock = threading.Lock()
        self._stores: dict[str, VectorStore] = {}

    def _default_embedder(self, layers: Sequence[str]) -> Embedder:
        m = self.settings.model
        return Embedder(
            m.model,
            revision=m.model_revision,
            spaces=list(layers),
            device=m.device,
            precision=m.precision,
            batch_size=m.batch_size,
            runtime=m.runtime,
            home=self.settings.storage.home,
        )

    def embedder(self, layers: Sequence[str]) -> Embedder:
        """The one embedder of this service, producing at least the given layer specs.

        Every layer comes out of the same forward pass, so one model serves all spaces;
        asking for a layer it lacks replaces it by one producing the union.
        """
        with self._lock:
            current = self._embedder
            if current is not None and set(layers) <= set(current.spaces):
                return current
            wanted = list(self.settings.model.spaces)
            for layer in [*(current.spaces if current else []), *layers]:
                if layer not in wanted:
                    wanted.append(layer)
            self._embedder = self._embedder_factory(wanted)
            self._batcher = MicroBatcher(self._embedder)
            return self._embedder

    def _embed_one(self, layers: Sequence[str], data: bytes) -> OneResult:
        """Decode and embed one image, sharing a forward pass with concurrent callers."""
        embedder = self.embedder(layers)
        decoded = decode_image(
            data,
            max_megapixels=self.settings.index.max_megapixels,
            min_size=_decode_size(embedder),
        )
        with self._lock:
            batcher = self._batcher
        assert batcher is not None
        return batcher.embed_one(decoded.image)

    def _space(self, session: Session, name: str | None) -> Space:
        return resolve_space(session, self.settings.model.spaces[0], name)

    def _store(self, session: Session, space: Space) -> VectorStore:
        with self._store_lock:
            store = self._stores.get(space.name)
            if store is None:
                store = open_store(self.settings, space.name, space.dim, space.metric)
                # The first-use check reports only: repairing here would race a writer in
                # another process, whose batch is in the store before its SQL commit.
                strays, missing = compare_space(session, space, store)
                if strays or missing:
                    log.warning(
                        "space %s: the store holds %d vectors the catalog does not know and "
                        "lacks %d it lists (a writer may be running; `vitdex doctor` tells)",
                        space.name,
                        strays,
                        missing,
                    )
                self._stores[space.name] = store
            return store

    def file_query(
        self,
        session: Session,
        space: Space,
        store: VectorStore,
        data: bytes,
        *,
        at: Image | None = None,
    ) -> tuple[int | None, np.ndarray]:
        """The query vector of a photo's bytes and its catalog id: the stored vector of an
        indexed photo with the same content (``at``, the catalog image at the query's
        path, first), else the model's embedding (refused when the model no longer
        matches the space) and no id."""
        sha = hashlib.sha256(data).hexdigest()
        found = at if at is not None and at.sha256 == sha else None
        if found is None or found.status != ImageStatus.INDEXED:
            found = repo.find_indexed_by_sha(session, sha)
        if found is not None and repo.has_vector(session, found.id, space.id):
            return found.id, store.get(np.asarray([found.id]))[0]
        embedder = self.embedder([space.layer])
        spec = next(s for s in embedder.space_specs() if s.name == space.layer)
        repo.check_space_matches(space, {**asdict(spec), "name": space.name})
        vector: np.ndarray = self._embed_one([space.layer], data).vectors[space.layer]
        return None, vector

    def similar(
        self,
        files: Sequence[Path] = (),
        ids: Sequence[int] = (),
        *,
        uploads: Sequence[tuple[str, bytes]] = (),
        k: int | None = 10,
        offset: int = 0,
        space: str | None = None,
        include_self: bool = False,
        filter: SearchFilter | None = None,
        min_score: float | None = None,
        negative_ids: Sequence[int] = (),
        negative_files: Sequence[Path] = (),
        negative_uploads: Sequence[tuple[str, bytes]] = (),
        combine: bool = False,
        negative_weight: float = DEFAULT_NEGATIVE_WEIGHT,
    ) -> list[QueryResult]:
        """Nearest indexed images of each catalog id, each query file and each upload (a
        ``(name, content)`` pair, searched by its bytes), in that order, best first.

        A query by id, or a file at a path the catalog holds, is left out of its own hits
        unless ``include_self``; exact copies of it at other paths are listed like any
        neighbour. A file or upload whose content the catalog holds (at any path) is
        searched with that stored vector instead of a forward pass.
        ``filter`` keeps only images matching its metadata conditions (resolved in SQL,
        then searched exactly among those ids). ``offset`` skips that many of the best
        hits (paging): the ``k`` returned are those ranked ``offset + 1`` onwards.
        ``min_score`` keeps only hits scoring at least that, however deep they rank (with
        ``k`` None: all of them); each result's ``next_offset`` says where the next page
        starts, None when no hit is left.

        With ``combine``, or any negative example, the examples make ONE query scored by
        the rule of :mod:`vitdex.search.examples` (mean cosine to the positives minus
        ``negative_weight`` times mean cosine to the negatives), and every example with a
        catalog id is left out of the hits.
        """
        if k is not None and k < 1:
            raise ConfigError("k must be at least 1")
        if offset < 0:
            raise ConfigError("offset must not be negative")
        finite(min_score)
        if k is None and min_score is None:
            raise ConfigError("give k (how many hits), a min_score, or both")
        check_negative_weight(negative_weight)
        together = combine or bool(negative_ids or negative_files or negative_uploads)
        with self.sessions() as session:
            sp = self._space(session, space)
            store = self._store(session, sp)
            positives = self._examples(session, sp, store, ids, files, uploads)
            if not positives:
                if together:
                    raise ConfigError("a query needs at least one positive example")
                return []
            if together:
                negatives = self._examples(
                    session, sp, store, negative_ids, negative_files, negative_uploads
                )
                queries = [
                    combined_query(sp.name, sp.metric, positives, negatives, negative_weight)
                ]
            else:
                queries = [Query(e.name, e.image_id, e.vector, (e.image_id,)) for e in positives]
            pages = []
            for query in queries:
                skip = () if include_self else {i for i in query.skip if i is not None}
                pages.append(
                    page_above(
                        functools.partial(self._search, session, sp, store, query.vector, filter),
                        offset=offset,
                        k=k,
                        min_score=min_score,
                        skip=skip,
                    )
                )
            wanted = sorted({h.id for hits, _ in pages for h in hits})
            images = repo.get_images(session, wanted)
            labels = repo.labels_of(session, wanted)
            results = []
            for query, (hits, more) in zip(queries, pages, strict=True):
                out = [_hit(h, images[h.id], labels.get(h.id, [])) for h in hits if h.id in images]
                after = offset + len(hits) if more else None
                results.append(QueryResult(query.name, query.image_id, sp.name, out, after))
        return results

    @staticmethod
    def _search(
        session: Session,
        space: Space,
        store: VectorStore,
        vector: np.ndarray,
        filter: SearchFilter | None,
        depth: int,
    ) -> list[SearchHit]:
        """The ``depth`` best hits of one query vector under ``filter``."""
        query = np.asarray(vector, np.float32).reshape(1, -1)
        return search_filtered(session, space, store, query, depth, filter)[0]

    def _examples(
        self,
        session: Session,
        space: Space,
        store: VectorStore,
        ids: Sequence[int],
        files: Sequence[Path],
        uploads: Sequence[tuple[str, bytes]],
    ) -> list[Example]:
        """The vectors of example photos given by catalog id, file and upload, in that
        order, each with the catalog id it stands for (a file at a catalog path), if any."""
        out: list[Example] = []
        for image_id in ids:
            img = repo.get_image(session, image_id)
            if img.status != ImageStatus.INDEXED:
                raise NotFoundError(
                    f"image {image_id} has no vectors (status {img.status}"
                    f"{': ' + img.error if img.error else ''})"
                )
            out.append(Example(img.path, image_id, store.get(np.asarray([image_id]))[0]))
        for file in files:
            at = _image_at(session, file)
            _, vector = self.file_query(session, space, store, _read(file), at=at)
            out.append(Example(str(file), at.id if at is not None else None, vector))
        for name, data in uploads:
            _, vector = self.file_query(session, space, store, data)
            out.append(Example(name, None, vector))
        return out

    def filter_misses(self, filter: SearchFilter | None) -> list[FilterMiss]:
        """The camera make, camera model or label of ``filter`` that no photo has, with
        the values close to each: why a filtered search came back empty."""
        if filter is None or filter.is_empty():
            return []
        with self.sessions() as session:
            return facets.filter_misses(session, filter)

    def classify(
        self, files: Sequence[Path] = (), *, uploads: Sequence[tuple[str, bytes]] = (), k: int = 5
    ) -> list[Classification]:
        """Top-k labels of each file, then of each upload (a ``(name, content)`` pair),
        from the checkpoint's classifier; the first file that cannot be read or decoded
        raises its error (the API answers one upload, so a bad one is the request's
        error)."""
        out = []
        for result in self.classify_each(files, uploads=uploads, k=k):
            if isinstance(result, ClassifyFailure):
                raise result.error
            out.append(result)
        return out

    def classify_each(
        self, files: Sequence[Path] = (), *, uploads: Sequence[tuple[str, bytes]] = (), k: int = 5
    ) -> list[Classification | ClassifyFailure]:
        """Like :meth:`classify`, but a file or upload that is missing, unreadable or not
        an image gets a :class:`ClassifyFailure` in its place, so one bad file in a batch
        costs only its own result. What fails for every file alike (no classifier, a model
        that does not load, a bad ``k``) still raises."""
        if k < 1:
            raise ConfigError("k must be at least 1")
        embedder = self.embedder(self.settings.model.spaces)
        embedder.load()
        if not embedder.has_classifier:
            raise NoClassifierError(
                f"model {embedder.model_id!r} has no classification head "
                "(it is a feature-extraction checkpoint); use a *ForImageClassification "
                "checkpoint such as google/vit-base-patch16-224 to classify"
            )
        # Files are read one at a time, as their turn comes: a missing one fails alone.
        named: list[tuple[str, Path | bytes]] = [*((str(f), f) for f in files), *uploads]
        out: list[Classification | ClassifyFailure] = []
        for name, source in named:
            try:
                data = source if isinstance(source, bytes) else _read(source)
                result = self._embed_one(self.settings.model.spaces, data)
            except (ImageError, NotFoundError) as exc:
                out.append(ClassifyFailure(name, exc))
                continue
            assert result.logits is not None
            labels = embedder.top_labels(result.logits, k)[0]
            out.append(Classification(name, label_scores(labels)))
        return out


@dataclass
class ClassifyFailure:
    """A file or upload of a classify batch that could not be classified, and why."""

    query: str
    error: ImageError | NotFoundError

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: a :class:`Classification`'s keys, no labels, plus ``error``."""
        return {"query": self.query, "labels": [], "error": self.error.message}


def finite(value: float | None) -> float | None:
    """``value`` unless it is NaN or infinite (a :class:`ConfigError`): a cut-off."""
    if value is not None and not math.isfinite(value):
        raise ConfigError("min_score must be a finite number")
    return value


def _hit(found: SearchHit, img: Image, labels: Sequence[tuple[str, float]]) -> Hit:
    """A store hit with the catalog facts of its image."""
    return Hit(
        image_id=found.id,
        path=img.path,
        score=round(float(found.score), SCORE_PLACES),
        labels=label_scores(labels),
        **photo_facts(img),
    )


def _decode_size(embedder: Embedder) -> tuple[int, int]:
    """The decoder takes (width, height); the embedder reports (height, width)."""
    height, width = embedder.input_size
    return width, height


def _image_at(session: Session, file: Path) -> Image | None:
    """The catalog image at ``file``'s path, by the path as given (made absolute, links
    kept, as the scanner records them) or as resolved; None for a file outside the
    catalog."""
    given = Path(os.path.normpath(Path(file).expanduser().absolute()))
    try:
        resolved = given.resolve()
    except (OSError, RuntimeError, ValueError):  # a link loop: reading it fails later
        resolved = given
    for candidate in dict.fromkeys([given, resolved]):
        found = repo.find_image_by_path(session, str(candidate))
        if found is not None:
            return found
    return None


def _read(file: Path) -> bytes:
    try:
        return Path(file).read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"no such file: {file}") from None
    except OSError as exc:
        raise ImageError(f"cannot read {file}: {exc.strerror or exc}") from None
