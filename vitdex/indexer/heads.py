"""The numbers of a head: its weights as bytes, what it predicts for vectors, and the
examples it is trained on (photos with a vector, from tags or folders).

A head is a softmax over ``vectors @ W.T + b``; scikit-learn's binary logistic regression
(one weight row, a sigmoid) is stored in the same two-row form, so every head predicts
alike. Also here: labelling freshly indexed vectors with every head of their space, inside
the indexing batch's own transaction.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from vitdex.db import heads as head_sql
from vitdex.db import repo
from vitdex.db import tags as tag_sql
from vitdex.db.head_models import Head
from vitdex.db.models import Space
from vitdex.errors import ConfigError
from vitdex.paths import inside

__all__ = [
    "Prediction",
    "add_corrections",
    "folder_examples",
    "head_matches",
    "label_new_vectors",
    "library_folder",
    "predict",
    "report_of",
    "softmax_form",
    "tag_examples",
    "weights_from_bytes",
    "weights_to_bytes",
]

log = logging.getLogger(__name__)

#: With one tag, "other" takes this many photos per tagged one (at least OTHER_MIN).
OTHER_RATIO, OTHER_MIN = 3, 20

#: Heads already reported as skipped for a changed model (said once per process).
_warned: set[tuple[str, int, str, str]] = set()


@dataclass(frozen=True)
class Prediction:
    """Per vector: the predicted class index, its probability, the gap to the runner-up's
    probability, and the runner-up's index."""

    index: np.ndarray
    confidence: np.ndarray
    margin: np.ndarray
    runner_up: np.ndarray


def softmax_form(coef: np.ndarray, intercept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``coef_`` / ``intercept_`` as softmax weights ``(C×D, C)``.

    A binary model has one row ``w`` with ``P(class 1) = sigmoid(w·x + b)``; the rows
    ``[0, w]`` and biases ``[0, b]`` give exactly that under a softmax.
    """
    w = np.asarray(coef, dtype=np.float32)
    b = np.asarray(intercept, dtype=np.float32).reshape(-1)
    if w.shape[0] == 1:
        w = np.vstack([np.zeros_like(w), w])
        b = np.concatenate([np.zeros(1, np.float32), b])
    return np.ascontiguousarray(w), np.ascontiguousarray(b)


def weights_to_bytes(weights: np.ndarray, biases: np.ndarray) -> bytes:
    """float32 little-endian: the ``C×D`` weights row by row, then the ``C`` biases."""
    w = np.ascontiguousarray(weights, dtype="<f4")
    b = np.ascontiguousarray(biases, dtype="<f4").reshape(-1)
    if w.ndim != 2 or b.shape[0] != w.shape[0]:
        raise ValueError(f"weights {w.shape} and biases {b.shape} do not match")
    return w.tobytes() + b.tobytes()


def weights_from_bytes(data: bytes, classes: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`weights_to_bytes`; ValueError when the size is not
    ``classes × (dim + 1)`` floats (a head stored for another dimension)."""
    expected = classes * (dim + 1) * 4
    if len(data) != expected:
        raise ValueError(f"head weights hold {len(data)} bytes, expected {expected}")
    flat = np.frombuffer(data, dtype="<f4").astype(np.float32)
    return flat[: classes * dim].reshape(classes, dim), flat[classes * dim :]


def predict(weights: np.ndarray, biases: np.ndarray, vectors: np.ndarray) -> Prediction:
    """Softmax probabilities of ``vectors`` (``N×D``) and the top two classes of each."""
    logits = np.asarray(vectors, dtype=np.float32) @ weights.T + biases
    logits -= logits.max(axis=1, keepdims=True)  # exp never overflows
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :2]
    rows = np.arange(len(probs))
    top, second = probs[rows, order[:, 0]], probs[rows, order[:, 1]]
    return Prediction(order[:, 0], top, top - second, order[:, 1])


def report_of(classes: Sequence[str], y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, object]:
    """Held-out accuracy, per-class precision / recall / f1 / support and the confusion
    matrix (rows true class, columns predicted, in ``classes`` order).

    A class never predicted has precision 0 (not a division by zero), as scikit-learn's
    ``zero_division=0`` says.
    """
    n = len(classes)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    hits = np.diag(confusion).astype(np.float64)
    predicted, support = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(hits, support, out=np.zeros(n), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(n), where=both > 0)
    total = int(confusion.sum())
    return {
        "accuracy": round(float(hits.sum() / total), 4) if total else 0.0,
        "classes": [
            {
                "name": name,
                "precision": round(float(precision[i]), 4),
                "recall": round(float(recall[i]), 4),
                "f1": round(float(f1[i]), 4),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        ],
        "confusion": confusion.tolist(),
    }


# --------------------------------------------------------------------------- examples


def tag_examples(
    session: Session, space: Space, tags: Sequence[str], seed: int, notes: list[str]
) -> tuple[list[str], dict[int, int], list[str]]:
    """Classes, ``image id → class index`` and the tags' names (see :func:`train_head`)."""
    found = []
    for name in dict.fromkeys(t.strip() for t in tags if t.strip()):
        tag = tag_sql.find_tag(session, name)
        if tag is None:
            known = ", ".join(t.name for t in tag_sql.list_tags(session)) or "none yet"
            raise ConfigError(f"unknown tag {name!r} (tags: {known})")
        found.append(tag)
    if len({t.id for t in found}) != len(found):
        raise ConfigError("the same tag is listed twice (tags ignore case)")
    members = [set(head_sql.tagged_vector_ids(session, t.id, space.id)) for t in found]
    if len(found) == 1:
        positives = members[0]
        rest = np.asarray(
            [i for i in repo.vector_image_ids(session, space.id) if i not in positives], np.int64
        )
        want = min(len(rest), max(OTHER_MIN, OTHER_RATIO * len(positives)))
        other = np.random.default_rng(seed).choice(rest, size=want, replace=False).tolist()
        notes.append(
            f"one tag: class 'other' is a random sample (seed {seed}) of {want} photos "
            f"without {found[0].name!r} ({OTHER_RATIO}x the tagged ones, at least {OTHER_MIN})"
        )
        labels = {**dict.fromkeys(positives, 0), **dict.fromkeys(other, 1)}
        return [found[0].name, "other"], labels, [found[0].name]
    seen: dict[int, int] = {}
    for i in set().union(*members):
        seen[i] = sum(i in m for m in members)
    both = {i for i, n in seen.items() if n > 1}
    if both:
        notes.append(f"{len(both)} photos carry two or more of the tags and were left out")
    labels = {i: c for c, m in enumerate(members) for i in m if i not in both}
    return [t.name for t in found], labels, [t.name for t in found]


def library_folder(session: Session, folder: str) -> Path:
    """``folder`` fully resolved (links followed), if it is a folder inside a library the
    catalog knows; :class:`ConfigError` otherwise. Only photos the catalog holds can be
    examples, and a link must not carry training out of the libraries."""
    try:
        resolved = Path(os.path.realpath(folder, strict=True))
    except (OSError, ValueError):
        raise ConfigError(f"no such folder: {folder}") from None
    roots = [Path(lib.root) for lib in repo.list_libraries(session)]
    if not inside(resolved, roots):
        known = ", ".join(str(r) for r in roots) or "none yet"
        raise ConfigError(f"{folder} is not inside an indexed library (libraries: {known})")
    if not resolved.is_dir():
        raise ConfigError(f"not a folder: {folder}")
    return resolved


def folder_examples(
    session: Session, space: Space, folder: str, notes: list[str]
) -> tuple[list[str], dict[int, int], str]:
    """Classes (direct subfolders), ``image id → class index`` and the resolved folder."""
    resolved = library_folder(session, folder)
    roots = [Path(lib.root) for lib in repo.list_libraries(session)]
    classes: list[str] = []
    labels: dict[int, int] = {}
    for sub in sorted(p for p in resolved.iterdir() if p.is_dir()):
        real = Path(os.path.realpath(sub))
        if not inside(real, roots):
            notes.append(f"subfolder {sub.name!r} leads outside the libraries and was skipped")
            continue
        for i in head_sql.vector_ids_under(session, str(real), space.id):
            labels.setdefault(i, len(classes))
        classes.append(sub.name)
    return classes, labels, str(resolved)


def add_corrections(
    session: Session,
    head: Head | None,
    classes: list[str],
    labels: dict[int, int],
    space: Space,
    notes: list[str],
) -> None:
    """The corrections people made under the earlier head of this name become examples
    (a correction wins over what the tags or folders said)."""
    if head is None:
        return
    index = {c.lower(): n for n, c in enumerate(classes)}
    with_vector = set(repo.vector_image_ids(session, space.id))
    used = 0
    for image_id, label in head_sql.corrected_examples(session, head.id):
        n = index.get(label.lower())
        if n is not None and image_id in with_vector:
            labels[image_id] = n
            used += 1
    if used:
        notes.append(f"{used} corrections of the earlier head {head.name!r} were used as examples")


def head_matches(head: Head, space: Space) -> bool:
    """Whether ``head`` was trained on the model the space holds now."""
    return (
        head.space_id == space.id
        and head.model_id == space.model_id
        and head.model_revision == (space.model_revision or "")
        and head.dim == space.dim
    )


def label_new_vectors(
    session: Session, space: Space, ids: Sequence[int], vectors: np.ndarray
) -> int:
    """Label freshly written vectors of ``space`` with each of its heads (corrections
    stay); returns the number of labels written. Runs in the caller's transaction, so a
    batch's labels commit with its vectors. Heads trained on another model or revision
    are skipped (and said once): their weights mean nothing against these vectors."""
    if not len(ids):
        return 0
    written = 0
    for head in head_sql.heads_of_space(session, space.id):
        if not head_matches(head, space):
            # Once per catalog, head and pair of models: every batch would say it again.
            url = session.get_bind().engine.url.render_as_string(hide_password=True)
            key = (url, head.id, head.model_revision, space.model_revision or "")
            if key not in _warned:
                _warned.add(key)
                log.warning(
                    "head %r was trained on %s@%s, space %r now holds %s@%s: it labels no "
                    "new photos until it is retrained",
                    head.name,
                    head.model_id,
                    head.model_revision,
                    space.name,
                    space.model_id,
                    space.model_revision,
                )
            continue
        w, b = weights_from_bytes(head.weights, len(head.classes), head.dim)
        pred = predict(w, b, vectors)
        classes = list(head.classes)
        written += head_sql.upsert_predictions(
            session,
            head.id,
            list(ids),
            [classes[i] for i in pred.index.tolist()],
            pred.confidence.tolist(),
            pred.margin.tolist(),
        )
    return written
