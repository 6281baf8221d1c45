"""Concurrent single-image embeds share forward passes and get their own results."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.photos import render
from vitdex.indexer.embedder import Embedder
from vitdex.search.batching import MicroBatcher


@pytest.fixture
def embedder(tiny_vit: Path) -> Embedder:
    emb = Embedder(str(tiny_vit), spaces=["cls", "cls@2"], precision="fp32", batch_size=8)
    emb.load()
    return emb


def _images(n: int) -> list[Image.Image]:
    return [Image.fromarray(render((48, 40), seed)) for seed in range(n)]


def test_concurrent_calls_are_batched_and_answered_correctly(embedder: Embedder) -> None:
    images = _images(24)
    expected = embedder.embed(images)
    batcher = MicroBatcher(embedder)
    # Hold the model while all requests arrive, so they must queue up behind it.
    gate = threading.Event()
    original = embedder.embed

    def slow_embed(batch: list[Image.Image]) -> object:
        gate.wait(5)
        return original(batch)

    embedder.embed = slow_embed  # type: ignore[method-assign,assignment]
    with ThreadPoolExecutor(24) as pool:
        futures = [pool.submit(batcher.embed_one, img) for img in images]
        threading.Timer(0.3, gate.set).start()
        results = [f.result(timeout=60) for f in futures]
    for i, result in enumerate(results):
        for space in ("cls", "cls@2"):
            np.testing.assert_allclose(result.vectors[space], expected.vectors[space][i], atol=1e-5)
        assert expected.logits is not None and result.logits is not None
        np.testing.assert_allclose(result.logits, expected.logits[i], atol=1e-4)
    assert sum(batcher.batch_sizes) == 24
    assert max(batcher.batch_sizes) > 1  # requests that overlapped shared a pass
    assert max(batcher.batch_sizes) <= 8


def test_a_lone_call_runs_at_once_and_errors_reach_the_caller(embedder: Embedder) -> None:
    batcher = MicroBatcher(embedder)
    result = batcher.embed_one(_images(1)[0])
    assert batcher.batch_sizes == [1]
    assert set(result.vectors) == {"cls", "cls@2"}

    def broken(batch: list[Image.Image]) -> object:
        raise RuntimeError("model fell over")

    embedder.embed = broken  # type: ignore[method-assign,assignment]
    with pytest.raises(RuntimeError, match="fell over"):
        batcher.embed_one(_images(1)[0])
