"""The samplers on plain vectors: minimum distance for every sampler, farthest-point
greediness against a brute-force reference, k-means coverage of planted clusters."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitdex.errors import ConfigError
from vitdex.training.curate import SAMPLERS, CurateOptions, InstanceSelection, choose_instances
from vitdex.training.curate.samplers import farthest_point, kmeans_representatives

Floats = npt.NDArray[np.float32]
# Selection computes cosines in float32; the checks here recompute them in float64.
TOL = 1e-5


def unit(x: npt.NDArray[np.float64]) -> Floats:
    out: Floats = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def clustered(
    rng: np.random.Generator, sizes: list[int], dim: int, spread: float
) -> tuple[Floats, list[int]]:
    """Groups around random directions (nearly orthogonal in ``dim``), shuffled."""
    centres = rng.standard_normal((len(sizes), dim))
    rows, labels = [], []
    for c, size in enumerate(sizes):
        rows.append(centres[c] + spread * rng.standard_normal((size, dim)))
        labels += [c] * size
    order = rng.permutation(len(labels))
    return unit(np.concatenate(rows))[order], [labels[i] for i in order]


def run(
    seeds: Floats, cand: Floats, options: CurateOptions, first_id: int = 1000
) -> InstanceSelection:
    """Select with seed ids 1.. and candidate ids ``first_id``.., scored by max cosine."""
    scores = (cand.astype(np.float64) @ seeds.T).max(axis=1) if len(seeds) else cand[:, 0]
    order = np.argsort(-scores, kind="stable")
    ids = [first_id + int(i) for i in order]
    return choose_instances(
        list(range(1, len(seeds) + 1)),
        seeds if len(seeds) else np.zeros((0, 0)),
        ids,
        [float(scores[i]) for i in order],
        cand[order],
        options,
    )


def vectors_of(seeds: Floats, cand: Floats, first_id: int = 1000) -> dict[int, Floats]:
    out = {i + 1: seeds[i] for i in range(len(seeds))}
    out.update({first_id + i: cand[i] for i in range(len(cand))})
    return out


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    sampler=st.sampled_from(SAMPLERS),
    n_seeds=st.integers(0, 3),
    n=st.integers(1, 60),
    clusters=st.integers(0, 6),  # 0: plain random vectors
    min_distance=st.floats(0.0, 0.6),
    extra=st.integers(0, 12),
    dim=st.sampled_from([3, 8, 32]),
)
def test_no_two_included_photos_are_closer_than_min_distance(
    seed: int,
    sampler: str,
    n_seeds: int,
    n: int,
    clusters: int,
    min_distance: float,
    extra: int,
    dim: int,
) -> None:
    rng = np.random.default_rng(seed)
    if clusters:
        sizes = [n // clusters + (1 if c < n % clusters else 0) for c in range(clusters)]
        cand, _ = clustered(rng, [s for s in sizes if s], dim, spread=0.3)
    else:
        cand = unit(rng.standard_normal((n, dim)))
    seeds = unit(rng.standard_normal((n_seeds, dim)))
    options = CurateOptions(
        min_distance=min_distance, max_items=max(1, n_seeds + extra), sampler=sampler
    )
    options.check(has_class_prompt=False)
    chosen = run(seeds, cand, options)
    vecs = vectors_of(seeds, cand)
    included = [r.image_id for r in chosen.rows if r.included]
    for a, b in combinations(included, 2):
        cosine = float(vecs[a].astype(np.float64) @ vecs[b])
        assert 1.0 - cosine > min_distance - TOL, (a, b, cosine)
    # The cap holds, and the sampler fills it whenever enough candidates are eligible.
    kept_seeds = [r for r in chosen.rows if r.rank == 0 and r.included]
    picks = [r for r in chosen.rows if r.rank > 0 and r.included]
    eligible = [r for r in chosen.rows if r.rank > 0 and r.reason not in ("near_duplicate",)]
    assert len(picks) == min(len(eligible), max(0, max(1, n_seeds + extra) - len(kept_seeds)))
    want = {"nearest": {"neighbour"}, "diverse": {"diverse"}}.get(
        sampler, {"representative", "diverse"}
    )
    assert {r.reason for r in picks} <= want
    left = {r.reason for r in eligible if not r.included}
    assert left <= ({"over_max"} if sampler == "nearest" else {"not_sampled"})
    # Every near-duplicate names an included or earlier-kept photo it is too close to.
    for r in chosen.rows:
        if r.reason == "near_duplicate":
            assert r.duplicate_of is not None
            cosine = float(vecs[r.image_id].astype(np.float64) @ vecs[r.duplicate_of])
            assert 1.0 - cosine <= min_distance + TOL


def brute_force_fps(cand: Floats, seeds: Floats, quota: int) -> list[int]:
    """Farthest-point sampling spelled out: each step scores every candidate afresh."""
    x = cand.astype(np.float64)
    picked_vecs = [s.astype(np.float64) for s in seeds]
    picked: list[int] = []
    if not picked_vecs:
        picked, picked_vecs = [0], [x[0]]
    while len(picked) < min(quota, len(x)):
        best, best_d = -1, -np.inf
        for i in range(len(x)):
            if i in picked:
                continue
            d = min(1.0 - float(x[i] @ p) for p in picked_vecs)
            if d > best_d:
                best, best_d = i, d
        picked.append(best)
        picked_vecs.append(x[best])
    return picked


@pytest.mark.parametrize("n_seeds", [0, 1, 3])
@pytest.mark.parametrize("seed", range(5))
def test_farthest_point_is_greedy_like_the_brute_force_reference(n_seeds: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cand, _ = clustered(rng, [5, 9, 2, 14], 16, spread=0.5)
    seeds = unit(rng.standard_normal((n_seeds, 16)))
    picks = farthest_point(list(range(len(cand))), cand, seeds, 12)
    assert picks == brute_force_fps(cand, seeds, 12)
    # Each pick maximises the minimum distance to what came before it, at its step.
    before = [s.astype(np.float64) for s in seeds] or [cand[picks[0]].astype(np.float64)]
    for step, j in enumerate(picks[0 if n_seeds else 1 :]):
        done = set(picks[: step + (0 if n_seeds else 1)])

        def gap(i: int) -> float:
            return min(1.0 - float(cand[i].astype(np.float64) @ p) for p in before)

        assert gap(j) >= max(gap(i) for i in range(len(cand)) if i not in done) - TOL
        before.append(cand[j].astype(np.float64))


@pytest.mark.parametrize("seed", range(6))
def test_representative_sampler_takes_one_photo_per_planted_cluster(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = [int(s) for s in rng.integers(2, 16, size=6)]
    cand, labels = clustered(rng, sizes, 48, spread=0.25)
    seeds = unit(rng.standard_normal((2, 48)))
    options = CurateOptions(sampler="representative", max_items=2 + 6, min_distance=0.01)
    chosen = run(seeds, cand, options)
    label_of = {1000 + i: labels[i] for i in range(len(cand))}
    picks = [r for r in chosen.rows if r.rank > 0 and r.included]
    assert all(r.reason == "representative" for r in picks)
    assert sorted(label_of[r.image_id] for r in picks) == list(range(6))
    # The clusters are the planted ones, largest first, each picking the member nearest
    # its centre (the normalised mean of its members).
    assert sorted(len(c.members) for c in chosen.clusters) == sorted(sizes)
    assert [len(c.members) for c in chosen.clusters] == sorted(sizes, reverse=True)
    vecs = vectors_of(seeds, cand)
    for c in chosen.clusters:
        assert len({label_of[m] for m in c.members}) == 1 and c.pick in c.members
        mean = np.mean([vecs[m].astype(np.float64) for m in c.members], axis=0)
        best = max(float(vecs[m] @ mean) for m in c.members)
        assert float(vecs[c.pick] @ mean) >= best - TOL  # ties (two members) either way


def test_diverse_sampler_reaches_every_cluster_and_picks_are_deterministic() -> None:
    rng = np.random.default_rng(7)
    cand, labels = clustered(rng, [20, 3, 3, 3], 32, spread=0.2)
    seeds = cand[[labels.index(0)]]  # the seed sits in the big group
    for sampler in ("diverse", "representative"):
        options = CurateOptions(sampler=sampler, max_items=4, dedup=None)
        first = run(seeds, cand, options)
        assert first == run(seeds, cand, options)
        picks = [r.image_id for r in first.rows if r.rank > 0 and r.included]
        if sampler == "diverse":
            # Farthest-point sampling leaves the seed's group for the three small ones.
            assert sorted(labels[i - 1000] for i in picks) == [1, 2, 3]


def test_representative_tops_up_when_k_means_leaves_a_cluster_empty() -> None:
    rng = np.random.default_rng(3)
    base = unit(rng.standard_normal((3, 8)))
    # Five candidates but only three distinct points: four clusters cannot all be filled.
    cand = base[[0, 0, 0, 1, 2]]
    chosen = run(
        np.zeros((0, 8), np.float32),
        cand,
        CurateOptions(sampler="representative", max_items=4, dedup=None),
    )
    picks = [r for r in chosen.rows if r.included]
    assert len(picks) == 4
    assert "diverse" in {r.reason for r in picks}
    assert sum(len(c.members) for c in chosen.clusters) == 5


def test_kmeans_with_enough_picks_makes_every_candidate_its_own_cluster() -> None:
    cand = unit(np.random.default_rng(0).standard_normal((4, 8)))
    clusters = kmeans_representatives([0, 2, 3], cand, 5)
    assert [(c.pick, c.members) for c in clusters] == [(0, (0,)), (2, (2,)), (3, (3,))]
    assert kmeans_representatives([0, 1], cand, 0) == []


def test_a_seed_too_close_to_another_seed_is_out() -> None:
    rng = np.random.default_rng(2)
    seed = unit(rng.standard_normal((1, 16)))
    seeds = np.concatenate([seed, unit(seed + 0.01 * rng.standard_normal(seed.shape))])
    cand = unit(rng.standard_normal((3, 16)))
    rows = run(seeds, cand, CurateOptions(min_distance=0.05)).rows
    assert [(r.image_id, r.included, r.reason, r.duplicate_of) for r in rows[:2]] == [
        (1, True, "seed", None),
        (2, False, "near_duplicate", 1),
    ]


def test_options_refuse_contradictions_and_missing_caps() -> None:
    def check(options: CurateOptions) -> None:
        options.check(has_class_prompt=False)

    for sampler in ("diverse", "representative"):
        with pytest.raises(ConfigError, match=f"the {sampler} sampler .* give max"):
            check(CurateOptions(sampler=sampler))
        with pytest.raises(ConfigError, match="takes no mmr"):
            check(CurateOptions(sampler=sampler, max_items=5, mmr=0.5))
    with pytest.raises(ConfigError, match="unknown sampler 'random'"):
        check(CurateOptions(sampler="random"))
    with pytest.raises(ConfigError, match="contradict"):
        check(CurateOptions(dedup=0.9, min_distance=0.2))
    with pytest.raises(ConfigError, match="give one of them"):
        check(CurateOptions(dedup=None, min_distance=0.2))
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ConfigError, match="min-distance is a cosine distance"):
            check(CurateOptions(min_distance=bad))
    with pytest.raises(ConfigError, match="tag filter cannot be empty"):
        check(CurateOptions(tags=("dog", "  ")))
    with pytest.raises(ConfigError, match="control characters"):
        check(CurateOptions(tags=("do\x00g",)))
    # min_distance decides over the default dedup, and agrees with a matching one.
    for options in (CurateOptions(min_distance=0.2), CurateOptions(dedup=0.8, min_distance=0.2)):
        check(options)
        assert options.near_duplicate_at == pytest.approx(0.8)
    assert CurateOptions().near_duplicate_at == 0.95
    assert CurateOptions(dedup=None).near_duplicate_at is None
