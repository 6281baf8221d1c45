"""The scoring rule of several examples and the paging of a cut-off, on plain numbers."""

from __future__ import annotations

import numpy as np
import pytest

from vitdex.errors import ConfigError
from vitdex.search.examples import Example, combine, combined_query, page_above, rule_scores
from vitdex.vectors.store import SearchHit


def _unit(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = x / np.linalg.norm(x, axis=-1, keepdims=True)
    return out


def test_one_inner_product_with_the_combined_vector_is_the_rule() -> None:
    rng = np.random.default_rng(0)
    vectors = _unit(rng.standard_normal((500, 32))).astype(np.float32)
    pos, neg = vectors[:3], vectors[3:5]
    for weight in (0.0, 0.5, 1.0, 3.0):
        query = combine(pos, neg, weight)
        assert query.dtype == np.float32 and query.shape == (32,)
        np.testing.assert_allclose(
            vectors @ query, rule_scores(vectors, pos, neg, weight), atol=1e-6
        )
    # One positive, no negative: plain cosine, and the example scores 1 with itself.
    np.testing.assert_allclose(combine(pos[0]), pos[0])
    assert rule_scores(vectors, pos[:1])[0] == pytest.approx(1.0)
    # Means, not sums: two copies of an example weigh what one does.
    np.testing.assert_allclose(combine(np.stack([pos[0], pos[0]])), pos[0], atol=1e-7)
    # The worked numbers of the rule: x close to p (cos 1), at right angles to n.
    x, p, n = np.eye(3)[0], np.eye(3)[0], np.eye(3)[1]
    assert rule_scores(x, p, n)[0] == pytest.approx(1.0)
    assert rule_scores(n, p, n)[0] == pytest.approx(-0.5)


def test_bad_examples_and_weights_are_refused() -> None:
    v = np.eye(4, dtype=np.float32)
    with pytest.raises(ConfigError, match="at least one positive"):
        combine(np.zeros((0, 4)), v[:1])
    for weight in (-0.1, 11.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="negative_weight"):
            combine(v[:1], v[1:2], weight)
    with pytest.raises(ValueError, match="must be"):
        combine(v[:1], np.eye(3))


class Ranked:
    """A store's answer to one query as ``page_above`` sees it: the best ``depth`` hits."""

    def __init__(self, scores: list[float]) -> None:
        self.hits = [SearchHit(100 + i, s) for i, s in enumerate(sorted(scores, reverse=True))]
        self.depths: list[int] = []

    def __call__(self, depth: int) -> list[SearchHit]:
        self.depths.append(depth)
        return self.hits[:depth]


def test_pages_above_a_cut_off_cover_it_exactly() -> None:
    rng = np.random.default_rng(1)
    store = Ranked(rng.uniform(-1, 1, 1000).tolist())
    skip = {store.hits[0].id, store.hits[7].id}
    want = [h for h in store.hits if h.id not in skip and h.score >= 0.3]
    assert len(want) > 200
    got, offset = [], 0
    while True:
        page, more = page_above(store, offset=offset, k=25, min_score=0.3, skip=skip)
        got.extend(page)
        offset += len(page)
        if not more:
            break
        assert len(page) == 25
    assert got == want
    # All at once (no k): the store is asked twice as deep until the scores drop under.
    store.depths.clear()
    every, more = page_above(store, offset=0, k=None, min_score=0.3, skip=skip)
    assert every == want and not more
    assert store.depths == [66 * 2**i for i in range(len(store.depths))]
    assert store.depths[-1] >= len(want)


def test_pages_without_a_cut_off_and_at_the_end() -> None:
    store = Ranked([0.9, 0.8, 0.7, 0.6, 0.5])
    page, more = page_above(store, offset=0, k=2, skip={100})
    assert [h.score for h in page] == [0.8, 0.7] and more
    assert store.depths == [4]  # one round: k + one to tell whether more follow + skipped
    page, more = page_above(store, offset=2, k=2, skip={100})
    assert [h.score for h in page] == [0.6, 0.5] and not more
    page, more = page_above(store, offset=0, k=10, min_score=0.95)
    assert page == [] and not more
    with pytest.raises(ConfigError, match="k"):
        page_above(store, offset=0, k=None)


def test_combined_query_names_its_examples_and_refuses_l2() -> None:
    v = np.eye(4, dtype=np.float32)
    pos = [Example("a.jpg", 1, v[0]), Example("upload", None, v[1])]
    neg = [Example("c.jpg", 3, v[2])]
    query = combined_query("cls", "ip", pos, neg, 0.5)
    assert query.name == "a.jpg + upload - c.jpg" and query.image_id is None
    assert query.skip == (1, None, 3)
    np.testing.assert_allclose(query.vector, [0.5, 0.5, -0.5, 0.0])
    # One example alone is an ordinary query (any metric), named and numbered as itself.
    alone = combined_query("cls", "l2", pos[:1], [], 0.5)
    assert (alone.name, alone.image_id, alone.skip) == ("a.jpg", 1, (1,))
    with pytest.raises(ConfigError, match="ip metric"):
        combined_query("cls", "l2", pos, [], 0.5)
    with pytest.raises(ConfigError, match="both a positive and a negative"):
        combined_query("cls", "ip", pos, [Example("again", 1, v[0])], 0.5)
