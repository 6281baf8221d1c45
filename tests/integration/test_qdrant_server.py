"""The store contract suite against a real Qdrant server.

The server is ``VITDEX_TEST_QDRANT_URL`` (with ``VITDEX_TEST_QDRANT_API_KEY`` if it needs
one), or a container started through ``testcontainers`` when that package and a Docker
engine are available (image ``VITDEX_TEST_QDRANT_IMAGE``). Without either, every test
here is skipped. Each run uses its own collection prefix and deletes its collections.
"""

from __future__ import annotations

import importlib
import itertools
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from qdrant_client import QdrantClient

from tests.unit.test_store_contract import (
    Backend,
    K,
    Results,
    assert_same_topk,
    assert_topk,
    brute_force,
    check_basics,
    check_cutoff_paging,
    check_declared,
    check_examples,
    check_migration,
    check_payload_kept,
    check_persistence,
    check_search,
    dataset,
    faiss_backend,
)
from vitdex.vectors.qdrant.store import QdrantStore
from vitdex.vectors.store import VectorStore

QDRANT_URL = os.environ.get("VITDEX_TEST_QDRANT_URL", "")
QDRANT_API_KEY = os.environ.get("VITDEX_TEST_QDRANT_API_KEY") or None
# Pinned so that runs compare like with like; override to test another server version.
QDRANT_IMAGE = os.environ.get("VITDEX_TEST_QDRANT_IMAGE", "qdrant/qdrant:v1.18.2")
NO_SERVER = "no Qdrant server: set VITDEX_TEST_QDRANT_URL or run a Docker engine"

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Server:
    """Where the server answers, and the collection prefix this run owns."""

    url: str
    api_key: str | None
    prefix: str


def _wait_ready(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Qdrant container at {url} did not become ready")
        time.sleep(0.5)


def _container_url() -> Iterator[str]:
    """Start a Qdrant container, yield its REST address, stop it; skip if impossible."""
    try:
        # Optional test dependencies, imported by name so type checking does not need them.
        docker = importlib.import_module("docker")
        containers = importlib.import_module("testcontainers.core.container")
    except ImportError:
        pytest.skip(f"{NO_SERVER} (testcontainers is not installed)")
    try:
        docker.from_env().ping()
    except Exception as exc:
        pytest.skip(f"{NO_SERVER} (Docker: {exc})")
    container = containers.DockerContainer(QDRANT_IMAGE).with_exposed_ports(6333)
    container.start()
    try:
        host = container.get_container_host_ip()
        url = f"http://{host}:{container.get_exposed_port(6333)}"
        _wait_ready(url)
        yield url
    finally:
        container.stop()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """The server for this module, and cleanup of every collection the run created."""
    urls = iter([QDRANT_URL]) if QDRANT_URL else _container_url()
    url = next(urls)
    prefix = f"vitdex_test_{uuid.uuid4().hex[:10]}_"
    try:
        yield Server(url, QDRANT_API_KEY, prefix)
    finally:
        client = QdrantClient(url=url, api_key=QDRANT_API_KEY, timeout=30)
        try:
            for collection in client.get_collections().collections:
                if collection.name.startswith(prefix):
                    client.delete_collection(collection.name)
        finally:
            client.close()
        for _ in urls:  # runs the container's teardown
            pass


_counter = itertools.count()


def server_backend(server: Server, **options: Any) -> Backend:
    """Stores on the server, under a prefix of their own (so each test starts empty)."""
    prefix = f"{server.prefix}{next(_counter)}_"

    def open_server(space: str, dim: int) -> VectorStore:
        return QdrantStore(
            space,
            dim,
            url=server.url,
            api_key=server.api_key,
            collection_prefix=prefix,
            timeout=30,
            **options,
        )

    return Backend("qdrant-server", open_server, filters=True)


@pytest.fixture
def backend(server: Server) -> Iterator[Backend]:
    made = server_backend(server)
    yield made
    made.close_all()


def test_declared_capabilities(backend: Backend) -> None:
    check_declared(backend)


def test_basics(backend: Backend) -> None:
    check_basics(backend)


def test_payloads_kept_when_vectors_replaced(backend: Backend) -> None:
    check_payload_kept(backend)


def test_persistence(backend: Backend) -> None:
    check_persistence(backend)


def test_examples_match_the_rule(backend: Backend) -> None:
    check_examples(backend)


def test_cutoff_pages_match_brute_force(backend: Backend) -> None:
    check_cutoff_paging(backend)


@pytest.fixture(scope="module")
def faiss_results(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Results]:
    done: list[Results] = []

    def run() -> Results:
        if not done:
            made = faiss_backend(tmp_path_factory.mktemp("faiss-search"))
            try:
                done.append(check_search(made))
            finally:
                made.close_all()
        return done[0]

    return run


def test_search_matches_brute_force_and_faiss(
    backend: Backend, faiss_results: Callable[[], Results]
) -> None:
    results = check_search(backend)
    reference = faiss_results()
    assert results.keys() >= reference.keys()
    for case, rows in reference.items():
        for qi, (a, b) in enumerate(zip(rows, results[case], strict=True)):
            assert_same_topk(a, b, f"{case} q{qi}")


def test_migrate_faiss_server_faiss(server: Server, tmp_path: Path) -> None:
    faiss, qdrant = faiss_backend(tmp_path), server_backend(server)
    try:
        check_migration(faiss, qdrant)
    finally:
        faiss.close_all()
        qdrant.close_all()


def test_migrate_server_faiss_server(server: Server, tmp_path: Path) -> None:
    faiss, qdrant = faiss_backend(tmp_path), server_backend(server)
    try:
        check_migration(qdrant, faiss)
    finally:
        faiss.close_all()
        qdrant.close_all()


def test_hnsw_with_int8_quantization(server: Server) -> None:
    """The approximate path (HNSW, int8 codes, rescoring) finds nearly the true top-k."""
    made = server_backend(
        server, exact=False, hnsw_m=16, hnsw_ef_construct=128, search_ef=128, quantization="int8"
    )
    try:
        store = made.store()
        data = dataset()
        store.upsert(data.ids, data.vectors, data.payloads)
        described = store.describe()
        assert described["quantization"] == "int8"
        assert described["hnsw_m"] == 16 and described["hnsw_ef_construct"] == 128
        assert set(described["payload_indexes"]) >= {"library_id", "dirs", "taken_at", "labels"}
        found = total = 0
        for qi, hits in enumerate(store.search(data.queries, K)):
            truth_ids, _ = brute_force(data, data.queries[qi])
            found += len({h.id for h in hits} & set(truth_ids[:K].tolist()))
            total += K
        assert found / total >= 0.9
        assert store.get(data.ids[:50]).tobytes() == data.vectors[:50].tobytes()
        assert np.array_equal(store.ids(), np.sort(data.ids))
    finally:
        made.close_all()


def test_sharded_on_disk_collection(server: Server) -> None:
    """Cluster settings reach the collection, and a sharded one still answers exactly."""
    made = server_backend(server, shards=2, on_disk=True)
    try:
        store = made.store()
        data = dataset()
        store.upsert(data.ids, data.vectors, data.payloads)
        described = store.describe()
        assert described["shards"] == 2 and described["on_disk"] is True
        for qi, hits in enumerate(store.search(data.queries[:10], K)):
            truth_ids, truth_scores = brute_force(data, data.queries[qi])
            assert_topk(hits, truth_ids, truth_scores, K, f"sharded q{qi}")
    finally:
        made.close_all()
