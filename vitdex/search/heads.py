"""Heads: linear classifiers trained on a space's stored vectors, and what they label.

The API, CLI and jobs call only the names in ``__all__``. A head is trained from tags (one
class per tag) or from a folder (one class per direct subfolder) on the vectors already
in the store, so training and labelling a whole library need no forward pass. It
remembers its space, model and revision and refuses any other.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import Settings
from vitdex.db import heads as head_sql
from vitdex.db import jobs, repo
from vitdex.db import tags as tag_sql
from vitdex.db.head_models import Head, LabelSource
from vitdex.db.jobs import JobCancelled
from vitdex.db.models import Space, iso, utcnow
from vitdex.errors import ConfigError, ConflictError
from vitdex.indexer.heads import (
    add_corrections,
    folder_examples,
    head_matches,
    library_folder,
    predict,
    report_of,
    softmax_form,
    tag_examples,
    weights_from_bytes,
    weights_to_bytes,
)
from vitdex.search.spaces import resolve_space

if TYPE_CHECKING:
    from vitdex.vectors.store import VectorStore

__all__ = [
    "MIN_EXAMPLES",
    "NAME_PATTERN",
    "apply_head",
    "check_head_name",
    "correct_label",
    "delete_head",
    "get_head",
    "head_labels",
    "list_heads",
    "queue_head_job",
    "train_head",
]

Progress = Callable[[int, int], None]

#: Head names: they are written in filters as ``HEAD:LABEL`` and in URLs.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
#: Fewest examples a class needs (fewer fit noise, and leave nothing to test on).
MIN_EXAMPLES = 5
#: Vectors read from the store per step when applying a head.
APPLY_CHUNK = 8192
JOB_KINDS = ("head-train", "head-apply")


def check_head_name(name: str) -> str:
    """``name`` if it is a valid head name, else :class:`ConfigError` saying the rule."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError(
            f"head name {name!r} must be 1-64 lower-case letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return name


def _taken(name: str) -> ConflictError:
    return ConflictError(f"a head named {name!r} exists: pass replace to retrain it")


def _check_sources(from_tags: Sequence[str], from_folder: str | None, test_fraction: float) -> None:
    if bool(from_tags) == bool(from_folder):
        raise ConfigError("train a head either from tags or from a folder (exactly one)")
    if not 0.05 <= test_fraction <= 0.5:
        raise ConfigError(f"test_fraction must lie between 0.05 and 0.5, not {test_fraction}")


def _open_store(settings: Settings, space: Space) -> VectorStore:
    from vitdex.vectors.factory import open_store  # the store runtime only when used

    return open_store(settings, space.name, space.dim, space.metric)


def _refuse_changed_model(head: Head, space: Space) -> None:
    if not head_matches(head, space):
        raise ConfigError(
            f"head {head.name!r} was trained on {head.model_id}@{head.model_revision} but "
            f"space {space.name!r} now holds {space.model_id}@{space.model_revision}: "
            "retrain it (vitdex heads train --replace)"
        )


def _head_dict(
    session: Session, head: Head, counts: dict[str, int] | None = None
) -> dict[str, Any]:
    space = session.get_one(Space, head.space_id)
    if counts is None:
        counts = head_sql.label_counts(session, [head.id])[head.id]
    return {
        "id": head.id,
        "name": head.name,
        "space": space.name,
        "model_id": head.model_id,
        "model_revision": head.model_revision,
        "model_matches": head_matches(head, space),
        "dim": head.dim,
        "source": head.source,
        "source_spec": dict(head.source_spec),
        "classes": list(head.classes),
        "report": dict(head.report),
        "created_at": iso(head.created_at),
        "trained_at": iso(head.trained_at),
        "applied_at": iso(head.applied_at),
        "label_counts": counts,
        "labelled": sum(counts.values()),
        "corrections": head_sql.correction_count(session, head.id),
    }


# --------------------------------------------------------------------------- training


def _fit(vectors: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.linear_model import LogisticRegression  # loaded only to train

    model = LogisticRegression(class_weight="balanced", max_iter=1000, random_state=seed)
    model.fit(vectors, y)
    return softmax_form(model.coef_, model.intercept_)


def train_head(
    settings: Settings,
    sessions: sessionmaker[Session],
    name: str,
    *,
    space: str | None = None,
    from_tags: Sequence[str] = (),
    from_folder: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    replace: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Fit head ``name`` and store it with its report; returns :func:`get_head`'s dict.

    The dict: ``id, name, space, model_id, model_revision, source, source_spec, classes,
    report {accuracy, classes: [{name, precision, recall, f1, support}], confusion
    (rows true, columns predicted, in ``classes`` order), train_count, test_count,
    notes}, created_at, trained_at, applied_at, label_counts {label: n}, labelled``.
    Raises ConfigError (bad name, too few examples, unknown tag/folder/space),
    ConflictError (name taken and not ``replace``).
    """
    from sklearn.model_selection import train_test_split  # loaded only to train

    check_head_name(name)
    _check_sources(from_tags, from_folder, test_fraction)
    report_progress = progress or (lambda _d, _t: None)
    report_progress(0, 3)
    notes: list[str] = []
    with sessions() as session:
        earlier = head_sql.find_head(session, name)
        if earlier is not None and not replace:
            raise _taken(name)
        if earlier is not None and space is None:
            space_row = session.get_one(Space, earlier.space_id)
        else:
            space_row = resolve_space(session, settings.model.spaces[0], space)
        if earlier is not None and earlier.space_id != space_row.id:
            old = session.get_one(Space, earlier.space_id).name
            raise ConfigError(
                f"head {name!r} was trained on space {old!r}, not {space_row.name!r}: "
                "delete it first to train it on another space"
            )
        if from_tags:
            classes, labels, names = tag_examples(session, space_row, from_tags, seed, notes)
            spec: dict[str, Any] = {"tags": names}
            source = "tags"
        else:
            classes, labels, folder = folder_examples(session, space_row, str(from_folder), notes)
            spec, source = {"folder": folder}, "folders"
        add_corrections(session, earlier, classes, labels, space_row, notes)
        session.expunge(space_row)
    counts = np.bincount(
        np.fromiter(labels.values(), np.int64, len(labels)), minlength=len(classes)
    )
    if len(classes) < 2:
        raise ConfigError(f"a head needs at least 2 classes, got {len(classes)}: {classes}")
    for cls, n in zip(classes, counts.tolist(), strict=True):
        if n < MIN_EXAMPLES:
            raise ConfigError(
                f"class {cls!r} has {n} example photos with a vector in space "
                f"{space_row.name!r}; a head needs at least {MIN_EXAMPLES} per class"
            )
    report_progress(1, 3)
    store = _open_store(settings, space_row)
    try:
        ids = np.intersect1d(np.fromiter(labels, np.int64, len(labels)), store.ids())
        vectors = store.get(ids).astype(np.float32)
    finally:
        store.close()
    y = np.asarray([labels[int(i)] for i in ids], np.int64)
    try:
        x_train, x_test, y_train, y_test = train_test_split(
            vectors, y, test_size=test_fraction, random_state=seed, stratify=y
        )
    except ValueError as exc:  # too few photos for a test part holding every class
        raise ConfigError(f"cannot split the examples for testing: {exc}") from None
    w, b = _fit(x_train, y_train, seed)
    report: dict[str, Any] = report_of(classes, y_test, predict(w, b, x_test).index)
    report_progress(2, 3)
    weights, biases = _fit(vectors, y, seed)  # the stored head learns from every example
    notes.append(
        "the report is on the held-out part; the stored weights were refit on all examples"
    )
    report.update(
        train_count=len(y_train),
        test_count=len(y_test),
        test_fraction=test_fraction,
        seed=seed,
        examples={
            c: int(n)
            for c, n in zip(classes, np.bincount(y, minlength=len(classes)).tolist(), strict=True)
        },
        notes=notes,
    )
    values = {
        "name": name,
        "space_id": space_row.id,
        "model_id": space_row.model_id,
        "model_revision": space_row.model_revision or "",
        "source": source,
        "source_spec": spec,
        "classes": classes,
        "weights": weights_to_bytes(weights, biases),
        "dim": int(vectors.shape[1]),
        "report": report,
    }
    with sessions() as session:
        head = head_sql.save_head(session, values, replace=True)
        out = _head_dict(session, head)
        session.commit()
    report_progress(3, 3)
    return out


# --------------------------------------------------------------------------- applying


def apply_head(
    settings: Settings,
    sessions: sessionmaker[Session],
    name: str,
    *,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Label every photo with a vector in the head's space (corrections are kept);
    returns ``{"head", "labelled", "corrections_kept", "label_counts", "seconds"}``.
    Raises ConfigError when the space's model is no longer the head's."""
    started = time.monotonic()
    report = progress or (lambda _d, _t: None)
    stop = should_stop or (lambda: False)
    with sessions() as session:
        head = head_sql.get_head_row(session, name)
        space = session.get_one(Space, head.space_id)
        _refuse_changed_model(head, space)
        head_id, classes = head.id, list(head.classes)
        w, b = weights_from_bytes(head.weights, len(classes), head.dim)
        wanted = np.asarray(repo.vector_image_ids(session, space.id), np.int64)
        session.expunge(space)
    store = _open_store(settings, space)
    try:
        ids = np.intersect1d(wanted, store.ids())
        total = len(ids)
        report(0, total)
        with sessions() as session:
            for start in range(0, total, APPLY_CHUNK):
                if stop():
                    raise JobCancelled()
                chunk = ids[start : start + APPLY_CHUNK]
                pred = predict(w, b, store.get(chunk))
                head_sql.upsert_predictions(
                    session,
                    head_id,
                    chunk.tolist(),
                    [classes[i] for i in pred.index.tolist()],
                    pred.confidence.tolist(),
                    pred.margin.tolist(),
                )
                session.commit()  # a long apply shows its labels as it goes
                report(min(start + APPLY_CHUNK, total), total)
            head_sql.drop_stale_predictions(session, head_id, space.id)
            row = session.get_one(Head, head_id)
            row.applied_at = utcnow()
            counts = head_sql.label_counts(session, [head_id])[head_id]
            kept = head_sql.correction_count(session, head_id)
            session.commit()
    finally:
        store.close()
    report(total, total)
    return {
        "head": name,
        "labelled": total,
        "corrections_kept": kept,
        "label_counts": counts,
        "seconds": round(time.monotonic() - started, 3),
    }


# --------------------------------------------------------------------------- reading


def list_heads(sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    """Every head, as :func:`get_head` returns it, by name."""
    with sessions() as session:
        heads = head_sql.list_head_rows(session)
        counts = head_sql.label_counts(session, [h.id for h in heads])
        return [_head_dict(session, h, counts[h.id]) for h in heads]


def get_head(sessions: sessionmaker[Session], name: str) -> dict[str, Any]:
    """One head (see :func:`train_head`); NotFoundError when there is none."""
    with sessions() as session:
        return _head_dict(session, head_sql.get_head_row(session, name))


def delete_head(sessions: sessionmaker[Session], name: str) -> None:
    """Delete a head and its labels; NotFoundError when there is none."""
    with sessions() as session:
        head_sql.delete_head_row(session, name)
        session.commit()


def _item(row: head_sql.LabelRow | None, image_id: int, path: str) -> dict[str, Any]:
    if row is None:
        return {
            "image_id": image_id,
            "path": path,
            "label": None,
            "confidence": None,
            "margin": None,
            "source": None,
            "runner_up": None,
        }
    return {
        "image_id": row.image_id,
        "path": row.path,
        "label": row.label,
        "confidence": round(row.confidence, 4),
        "margin": round(row.margin, 4),
        "source": row.source,
        "runner_up": None,
    }


def _runner_ups(settings: Settings, head: Head, space: Space, items: list[dict[str, Any]]) -> None:
    """Fill ``runner_up`` of the predicted items from their vectors (one small read)."""
    wanted = [it for it in items if it["source"] == LabelSource.PREDICTED.value]
    if not wanted or not head_matches(head, space):
        return
    store = _open_store(settings, space)
    try:
        ids = np.asarray([it["image_id"] for it in wanted], np.int64)
        present = np.isin(ids, store.ids())
        w, b = weights_from_bytes(head.weights, len(head.classes), head.dim)
        pred = predict(w, b, store.get(ids[present]))
    finally:
        store.close()
    for it, second in zip(
        [it for it, p in zip(wanted, present, strict=True) if p],
        pred.runner_up.tolist(),
        strict=True,
    ):
        it["runner_up"] = head.classes[second]


def head_labels(
    sessions: sessionmaker[Session],
    name: str,
    *,
    label: str | None = None,
    order: str = "uncertain",
    source: str | None = None,
    limit: int = 50,
    offset: int = 0,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """A page of the head's labelled photos: ``{"head", "total", "items": [{image_id,
    path, label, confidence, margin, source, runner_up}]}``. ``order``: ``uncertain``
    (smallest margin first), ``confident`` (largest first) or ``recent``. ``runner_up``
    (the class the head would pick second) is read from the vectors, so only with
    ``settings``; None otherwise and for corrections."""
    if order not in head_sql.LABEL_ORDERS:
        raise ConfigError(f"order must be one of {', '.join(head_sql.LABEL_ORDERS)}, not {order!r}")
    if source is not None and source not in {s.value for s in LabelSource}:
        raise ConfigError(f"source must be 'predicted' or 'corrected', not {source!r}")
    if not 1 <= limit <= 1000 or offset < 0:
        raise ConfigError("limit must lie between 1 and 1000 and offset must not be negative")
    with sessions() as session:
        head = head_sql.get_head_row(session, name)
        total, rows = head_sql.label_page(
            session, head.id, label=label, source=source, order=order, limit=limit, offset=offset
        )
        items = [_item(r, r.image_id, r.path) for r in rows]
        if settings is not None:
            _runner_ups(settings, head, session.get_one(Space, head.space_id), items)
    return {"head": name, "total": total, "items": items}


def _predict_one(settings: Settings, session: Session, head: Head, image_id: int) -> None:
    """Label one photo with the head's prediction (after its correction was removed), so
    it is not left without a label until the next apply."""
    space = session.get_one(Space, head.space_id)
    if not head_matches(head, space):
        return
    store = _open_store(settings, space)
    try:
        ids = np.asarray([image_id], np.int64)
        if not np.isin(ids, store.ids()).all():
            return
        vectors = store.get(ids)
    finally:
        store.close()
    w, b = weights_from_bytes(head.weights, len(head.classes), head.dim)
    pred = predict(w, b, vectors)
    head_sql.upsert_predictions(
        session,
        head.id,
        [image_id],
        [head.classes[int(pred.index[0])]],
        pred.confidence.tolist(),
        pred.margin.tolist(),
    )


def correct_label(
    sessions: sessionmaker[Session],
    name: str,
    image_id: int,
    label: str | None,
    *,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Set a photo's label under a head by hand (kept through every later apply); ``None``
    removes the correction, and with ``settings`` the head predicts the photo again at
    once (without, the next apply does). Returns the photo's item as in
    :func:`head_labels`. ConfigError for a label the head does not have."""
    with sessions() as session:
        head = head_sql.get_head_row(session, name)
        image = repo.get_image(session, image_id)
        if label is None:
            if head_sql.clear_correction(session, head.id, image.id) and settings is not None:
                _predict_one(settings, session, head, image.id)
        else:
            by_key = {c.lower(): c for c in head.classes}
            spelled = by_key.get(label.strip().lower())
            if spelled is None:
                raise ConfigError(
                    f"head {name!r} has no class {label!r} (classes: {', '.join(head.classes)})"
                )
            head_sql.set_correction(session, head.id, image.id, spelled)
        session.commit()
        return _item(head_sql.label_of(session, head.id, image.id), image.id, image.path)


def queue_head_job(
    sessions: sessionmaker[Session], kind: str, params: dict[str, Any]
) -> dict[str, Any]:
    """A queued job row of kind ``head-train`` or ``head-apply`` (committed; the caller
    submits it). Arguments are checked now, so a bad one is a 4xx, not a failed job."""
    if kind not in JOB_KINDS:
        raise ConfigError(f"unknown head job kind {kind!r} (kinds: {', '.join(JOB_KINDS)})")
    name = check_head_name(str(params.get("name", "")))
    space = params.get("space")
    with sessions() as session:
        existing = head_sql.find_head(session, name)
        if space is not None:
            space = repo.get_space(session, str(space)).name
            if existing is not None and existing.space_id != repo.get_space(session, space).id:
                raise ConfigError(f"head {name!r} was trained on another space than {space!r}")
        if kind == "head-apply":
            head = head_sql.get_head_row(session, name)
            _refuse_changed_model(head, session.get_one(Space, head.space_id))
            clean: dict[str, Any] = {"name": name}
        else:
            tags = [str(t) for t in params.get("from_tags") or ()]
            folder = params.get("from_folder")
            fraction = float(params.get("test_fraction", 0.2))
            _check_sources(tags, None if folder is None else str(folder), fraction)
            replace = bool(params.get("replace", False))
            if existing is not None and not replace:
                raise _taken(name)
            for tag in tags:
                if tag_sql.find_tag(session, tag) is None:
                    raise ConfigError(f"unknown tag {tag!r}")
            if folder is not None:
                library_folder(session, str(folder))
            clean = {
                "name": name,
                "space": space,
                "from_tags": tags,
                "from_folder": None if folder is None else str(folder),
                "test_fraction": fraction,
                "seed": int(params.get("seed", 0)),
                "replace": replace,
            }
        job, _ = jobs.enqueue_job_row(session, kind, clean, dedupe_key=f"{kind}:{name}")
        session.commit()
        return jobs.job_to_dict(job)
