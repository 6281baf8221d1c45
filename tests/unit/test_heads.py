"""The numbers of a head: weights as bytes, scikit-learn's binary model in softmax form,
predictions with margin and runner-up, the report's arithmetic and the name rule."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from vitdex.errors import ConfigError
from vitdex.indexer.heads import (
    predict,
    report_of,
    softmax_form,
    weights_from_bytes,
    weights_to_bytes,
)
from vitdex.search.heads import check_head_name


def test_weights_round_trip_is_float32_little_endian() -> None:
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(3, 5)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    data = weights_to_bytes(w, b)
    assert len(data) == 3 * (5 + 1) * 4
    assert data[:4] == np.float32(w[0, 0]).astype("<f4").tobytes()
    assert data[-4:] == np.float32(b[2]).astype("<f4").tobytes()
    w2, b2 = weights_from_bytes(data, 3, 5)
    assert np.array_equal(w, w2) and np.array_equal(b, b2)
    with pytest.raises(ValueError, match="hold 68 bytes, expected 72"):
        weights_from_bytes(data[:-4], 3, 5)


def _blobs(classes: int, n: int = 40, dim: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(classes)
    centres = rng.normal(scale=3.0, size=(classes, dim))
    y = np.repeat(np.arange(classes), n)
    return (centres[y] + rng.normal(size=(len(y), dim))).astype(np.float32), y


@pytest.mark.parametrize("classes", [2, 3])
def test_softmax_form_predicts_as_sklearn(classes: int) -> None:
    x, y = _blobs(classes)
    model = LogisticRegression(max_iter=1000).fit(x, y)
    w, b = softmax_form(model.coef_, model.intercept_)
    assert w.shape == (classes, 6) and b.shape == (classes,)
    w, b = weights_from_bytes(weights_to_bytes(w, b), classes, 6)
    pred = predict(w, b, x)
    probs = model.predict_proba(x)
    assert np.array_equal(pred.index, model.predict(x))
    assert np.allclose(pred.confidence, probs.max(axis=1), atol=1e-5)
    top2 = np.sort(probs, axis=1)[:, -2:]
    assert np.allclose(pred.margin, top2[:, 1] - top2[:, 0], atol=1e-5)


def test_binary_model_becomes_two_softmax_rows() -> None:
    w, b = softmax_form(np.asarray([[2.0, -1.0]]), np.asarray([0.5]))
    assert np.array_equal(w, [[0.0, 0.0], [2.0, -1.0]]) and np.array_equal(b, [0.0, 0.5])
    pred = predict(w, b, np.asarray([[1.0, 0.0], [-1.0, 0.0]], np.float32))
    # sigmoid(2.5) and sigmoid(-1.5): class 1 then class 0, each with the other second.
    assert pred.index.tolist() == [1, 0] and pred.runner_up.tolist() == [0, 1]
    assert pred.confidence[0] == pytest.approx(1 / (1 + np.exp(-2.5)), abs=1e-6)
    assert pred.margin[1] == pytest.approx(2 / (1 + np.exp(-1.5)) - 1, abs=1e-6)


def test_report_on_a_known_case() -> None:
    # 3 classes; true a,a,a,b,b,c predicted a,a,b,b,b,a.
    y_true, y_pred = np.asarray([0, 0, 0, 1, 1, 2]), np.asarray([0, 0, 1, 1, 1, 0])
    report = report_of(["a", "b", "c"], y_true, y_pred)
    assert report["accuracy"] == pytest.approx(4 / 6, abs=1e-4)
    assert report["confusion"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    by = {c["name"]: c for c in report["classes"]}  # type: ignore[attr-defined]
    assert by["a"] == {
        "name": "a",
        "precision": 0.6667,
        "recall": 0.6667,
        "f1": 0.6667,
        "support": 3,
    }
    assert (by["b"]["precision"], by["b"]["recall"], by["b"]["f1"]) == (0.6667, 1.0, 0.8)
    assert (by["c"]["precision"], by["c"]["recall"], by["c"]["f1"]) == (0.0, 0.0, 0.0)
    # The same as scikit-learn's, zero_division=0.
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2], zero_division=0)
    assert [by[k]["precision"] for k in "abc"] == pytest.approx(p.tolist(), abs=1e-4)
    assert [by[k]["recall"] for k in "abc"] == pytest.approx(r.tolist(), abs=1e-4)
    assert [by[k]["f1"] for k in "abc"] == pytest.approx(f.tolist(), abs=1e-4)
    assert report["confusion"] == confusion_matrix(y_true, y_pred, labels=[0, 1, 2]).tolist()


@pytest.mark.parametrize("name", ["kind", "a", "0-9_x", "x" * 64])
def test_good_head_names(name: str) -> None:
    assert check_head_name(name) == name


@pytest.mark.parametrize("name", ["", "Kind", "-a", "_a", "a b", "a:b", "x" * 65, "é"])
def test_bad_head_names(name: str) -> None:
    with pytest.raises(ConfigError, match="lower-case letters"):
        check_head_name(name)
