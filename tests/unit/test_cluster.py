"""Clustering well-separated synthetic vectors written straight into a FAISS store."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from vitdex.config import Settings, load_settings
from vitdex.db import ensure_schema, make_engine, repo, session_factory
from vitdex.errors import ConfigError, NotFoundError
from vitdex.search.cluster import (
    auto_k_candidates,
    cluster_space,
    filter_from_params,
    filter_to_params,
    get_cluster_run,
    list_cluster_runs,
)
from vitdex.vectors.factory import open_store
from vitdex.vectors.store import SearchFilter

DIM = 16
GROUPS = ("a", "b", "c")
PER_GROUP = 20


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings (1 = identical partitions)."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1)

    def pairs(x: np.ndarray) -> float:
        return float((x * (x - 1) / 2).sum())

    index = pairs(table)
    rows, cols, n = pairs(table.sum(1)), pairs(table.sum(0)), len(a)
    expected = rows * cols / (n * (n - 1) / 2)
    best = (rows + cols) / 2
    return (index - expected) / (best - expected)


@pytest.fixture
def world(tmp_path: Path) -> tuple[Settings, sessionmaker[Session], dict[int, str]]:
    """Three tight groups of unit vectors, one folder per group, in catalog and store."""
    settings = load_settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path}/c.db")
    engine = make_engine(settings.storage.resolved_database_url)
    ensure_schema(engine)
    sessions = session_factory(engine)
    rng = np.random.default_rng(7)
    centers = rng.normal(size=(len(GROUPS), DIM))
    group_of: dict[int, str] = {}
    with sessions() as session:
        lib = repo.library_for(session, "/lib")
        files = [(f"/lib/{g}/{i}.jpg", 1, 1) for g in GROUPS for i in range(PER_GROUP)]
        ids = repo.insert_pending(session, lib.id, files)
        space = repo.ensure_space(
            session,
            {
                "name": "cls",
                "model_id": "synthetic",
                "model_revision": "0",
                "layer": "cls",
                "preprocessing": {},
                "dim": DIM,
                "metric": "ip",
            },
        )
        order = [ids[path] for path, _, _ in files]
        repo.add_vector_rows(session, order, [space.id])
        vectors = []
        for gi, g in enumerate(GROUPS):
            for i in range(PER_GROUP):
                group_of[ids[f"/lib/{g}/{i}.jpg"]] = g
                vectors.append(centers[gi] + 0.05 * rng.normal(size=DIM))
        x = np.asarray(vectors, np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        store = open_store(settings, "cls", DIM)
        store.upsert(np.asarray(order, np.int64), x)
        store.close()
        session.commit()
    return settings, sessions, group_of


def _members(run: dict[str, object]) -> dict[int, int]:
    out: dict[int, int] = {}
    for c in run["clusters"]:  # type: ignore[attr-defined]
        for m in c["members"]:
            out[m["image_id"]] = c["label"]
    return out


def test_auto_k_recovers_the_groups(
    world: tuple[Settings, sessionmaker[Session], dict[int, str]],
) -> None:
    settings, sessions, group_of = world
    steps: list[tuple[int, int]] = []
    run_id = cluster_space(
        settings, sessions, space="cls", k="auto", progress=lambda d, t: steps.append((d, t))
    )
    assert steps and steps[-1][0] == steps[-1][1]
    with sessions() as session:
        run = get_cluster_run(session, run_id, members_limit=1000)
    assert run["k"] == 3
    assert run["n_images"] == len(group_of)
    assert run["score"] is not None and run["score"] > 0.8
    assert "silhouettes" in run["params"]
    members = _members(run)
    ids = sorted(group_of)
    truth = np.array([GROUPS.index(group_of[i]) for i in ids])
    found = np.array([members[i] for i in ids])
    assert adjusted_rand(truth, found) == pytest.approx(1.0)
    sizes = [c["size"] for c in run["clusters"]]
    assert sizes == sorted(sizes, reverse=True) == [PER_GROUP] * 3
    for c in run["clusters"]:
        # The medoids are the closest members of their own cluster, closest first.
        assert c["medoid_image_id"] == c["medoid_image_ids"][0] == c["members"][0]["image_id"]
        assert len(c["medoid_image_ids"]) == 3
        assert {members[i] for i in c["medoid_image_ids"]} == {c["label"]}
        dists = [m["distance"] for m in c["members"]]
        assert dists == sorted(dists)


def test_paging_and_one_cluster(
    world: tuple[Settings, sessionmaker[Session], dict[int, str]],
) -> None:
    settings, sessions, _ = world
    run_id = cluster_space(settings, sessions, space="cls", k=3, seed=1)
    with sessions() as session:
        full = get_cluster_run(session, run_id, members_limit=100, cluster=1)
        assert [c["label"] for c in full["clusters"]] == [1]
        everyone = [m["image_id"] for m in full["clusters"][0]["members"]]
        assert len(everyone) == PER_GROUP
        pages = [
            get_cluster_run(session, run_id, members_limit=7, members_offset=off, cluster=1)
            for off in (0, 7, 14)
        ]
        paged = [m["image_id"] for p in pages for m in p["clusters"][0]["members"]]
        assert paged == everyone
        assert pages[2]["clusters"][0]["medoid_image_ids"] == everyone[:3]
        with pytest.raises(NotFoundError):
            get_cluster_run(session, run_id, cluster=9)
        with pytest.raises(NotFoundError):
            get_cluster_run(session, run_id + 100)
        runs, total = list_cluster_runs(session, space="cls")
        assert total == 1 and runs[0]["id"] == run_id and runs[0]["k"] == 3


def test_filter_restricts_members(
    world: tuple[Settings, sessionmaker[Session], dict[int, str]],
) -> None:
    settings, sessions, group_of = world
    flt = SearchFilter(path_prefix="/lib/b")
    assert filter_from_params(filter_to_params(flt)) == flt
    run_id = cluster_space(settings, sessions, space="cls", k=2, filter=flt)
    with sessions() as session:
        run = get_cluster_run(session, run_id, members_limit=1000)
    members = _members(run)
    assert run["n_images"] == PER_GROUP == len(members)
    assert {group_of[i] for i in members} == {"b"}
    assert run["params"]["filter"] == {"path_prefix": "/lib/b"}


def test_bad_requests_are_refused(
    world: tuple[Settings, sessionmaker[Session], dict[int, str]],
) -> None:
    settings, sessions, _ = world
    with pytest.raises(ConfigError, match="k must"):
        cluster_space(settings, sessions, space="cls", k=1)
    with pytest.raises(ConfigError, match="unknown clustering method"):
        cluster_space(settings, sessions, space="cls", method="dbscan")
    with pytest.raises(NotFoundError):
        cluster_space(settings, sessions, space="nope")
    with pytest.raises(ConfigError, match="needs 2 or more"):
        cluster_space(settings, sessions, space="cls", filter=SearchFilter(path_prefix="/x"))
    # Without the cluster extra, HDBSCAN says what to install (None in sys.modules makes
    # the import fail as if scikit-learn were absent).
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "sklearn.cluster", None)
        with pytest.raises(ConfigError, match="needs scikit-learn"):
            cluster_space(settings, sessions, space="cls", method="hdbscan")


def test_hdbscan_finds_the_groups_and_marks_outliers_as_noise(
    world: tuple[Settings, sessionmaker[Session], dict[int, str]],
) -> None:
    settings, sessions, group_of = world
    # Three photos unlike any other, off on the far side of the sphere from all three
    # groups: HDBSCAN should leave them out of every cluster.
    store = open_store(settings, "cls", DIM)
    mean = store.get(np.asarray(sorted(group_of), np.int64)).mean(axis=0)
    store.close()
    mean /= np.linalg.norm(mean)
    side = np.linalg.qr(np.column_stack([mean, np.eye(DIM)[:, :3]]))[0][:, 1:].T
    x = -mean + 0.5 * side  # three directions around the antipode of the groups
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    with sessions() as session:
        lib = repo.library_for(session, "/lib")
        paths = [(f"/lib/odd/{i}.jpg", 1, 1) for i in range(3)]
        ids = repo.insert_pending(session, lib.id, paths)
        odd = [ids[p] for p, _, _ in paths]
        space = repo.get_space(session, "cls")
        repo.add_vector_rows(session, odd, [space.id])
        store = open_store(settings, "cls", DIM)
        store.upsert(np.asarray(odd, np.int64), x)
        store.close()
        session.commit()
    run_id = cluster_space(settings, sessions, space="cls", method="hdbscan", min_cluster_size=5)
    with sessions() as session:
        run = get_cluster_run(session, run_id, members_limit=1000)
    assert run["method"] == "hdbscan" and run["params"]["min_cluster_size"] == 5
    members = _members(run)
    ids_sorted = sorted(group_of)
    truth = np.array([GROUPS.index(group_of[i]) for i in ids_sorted])
    found = np.array([members[i] for i in ids_sorted])
    assert adjusted_rand(truth, found) == pytest.approx(1.0)
    assert {members[i] for i in odd} == {-1}  # noise
    real = [c for c in run["clusters"] if c["label"] >= 0]
    assert sorted(c["size"] for c in real) == [PER_GROUP] * 3
    assert run["score"] is not None and run["score"] > 0.8


def test_auto_k_candidates_stay_small() -> None:
    assert auto_k_candidates(3) == [2]
    assert auto_k_candidates(60)[0] == 2 and max(auto_k_candidates(60)) <= 11
    big = auto_k_candidates(1_000_000)
    assert max(big) == 50 and len(big) <= 8
