"""Instance and class selection on plain vectors: near-duplicates against everything kept."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from vitdex.training.curate import CurateOptions, select_class, select_instances


def _unit(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def test_duplicates_are_found_among_many_kept_items_without_catalog_seeds() -> None:
    rng = np.random.default_rng(0)
    # 150 distinct vectors (more than the kept set's first allocation), then a copy of
    # each of the first 150 nudged a little: every copy is a near-duplicate of its original.
    base = _unit(rng.standard_normal((150, 64)))
    copies = _unit(base + 0.01 * rng.standard_normal(base.shape))
    vectors = np.concatenate([base, copies])
    ids = list(range(1000, 1300))
    scores = list(np.linspace(0.99, 0.5, 300))
    rows = select_instances([], np.zeros((0, 0)), ids, scores, vectors, CurateOptions(dedup=0.95))
    by_id = {row.image_id: row for row in rows}
    assert all(by_id[i].included for i in ids[:150])
    for original, copy in zip(ids[:150], ids[150:], strict=True):
        assert not by_id[copy].included and by_id[copy].duplicate_of == original


def test_seeds_count_as_kept_and_class_images_skip_instance_duplicates() -> None:
    rng = np.random.default_rng(1)
    seed = _unit(rng.standard_normal((1, 32)))
    other = _unit(rng.standard_normal((2, 32)))
    near_seed = _unit(seed + 0.01 * rng.standard_normal(seed.shape))
    vectors = np.concatenate([near_seed, other])
    rows = select_instances([7], seed, [10, 11, 12], [0.9, 0.8, 0.7], vectors, CurateOptions())
    reasons = {row.image_id: (row.included, row.reason, row.duplicate_of) for row in rows}
    assert reasons[10] == (False, "near_duplicate", 7)
    assert reasons[11][0] and reasons[12][0]

    drawn = select_class([20, 21, 22], [0.6, 0.5, 0.4], vectors, [7], seed, count=5, dedup=0.95)
    assert [(r.image_id, r.included, r.duplicate_of) for r in drawn] == [
        (20, False, 7),
        (21, True, None),
        (22, True, None),
    ]
