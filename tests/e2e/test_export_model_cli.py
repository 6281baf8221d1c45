"""``vitdex export-model`` then ``VITDEX_RUNTIME=onnxruntime vitdex index``: the export is
reused, the spaces record the runtime, and the vectors agree with a torch index of the
same folder within the bound."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import as_json, run_vitdex
from tests.photos import render
from vitdex.indexer.runtimes import FP_BOUND, installed

pytestmark = pytest.mark.skipif(not installed("onnxruntime"), reason="onnxruntime missing")


def _env(tmp_path: Path, tiny_vit: Path, name: str, runtime: str) -> dict[str, str]:
    return {
        "VITDEX_HOME": str(tmp_path / f"home-{name}"),
        "VITDEX_DATABASE_URL": f"sqlite:///{tmp_path / f'{name}.db'}",
        "VITDEX_MODEL": str(tiny_vit),
        "VITDEX_SPACES": "cls,cls@2",
        "VITDEX_PRECISION": "fp32",
        "VITDEX_BATCH_SIZE": "4",
        "VITDEX_RUNTIME": runtime,
    }


def _vectors(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, dict[str, np.ndarray]]:
    """Each space's vectors by photo file name, read from the catalog and the store."""
    from sqlalchemy import select

    from vitdex.config import load_settings
    from vitdex.db import make_engine, session_factory
    from vitdex.db.models import Image as ImageRow
    from vitdex.db.models import Space
    from vitdex.vectors.factory import open_store

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    engine = make_engine(settings.storage.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            rows = list(session.execute(select(ImageRow.id, ImageRow.path)))
            spaces = list(session.scalars(select(Space)))
        ids = np.asarray([r.id for r in rows], dtype=np.int64)
        result = {}
        for space in spaces:
            store = open_store(settings, space.name, space.dim, space.metric)
            try:
                found = store.get(ids)
            finally:
                store.close()
            result[space.name] = {Path(r.path).name: v for r, v in zip(rows, found, strict=True)}
        return result
    finally:
        engine.dispose()


def test_export_then_index_with_onnxruntime(
    tmp_path: Path, tiny_vit: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(5):
        Image.fromarray(render((64 + 8 * i, 48), seed=i)).save(photos / f"p{i}.jpg")
    onnx_env = _env(tmp_path, tiny_vit, "onnx", "torch")

    exported = as_json(run_vitdex("export-model", "--format", "onnx", "--json", env=onnx_env))
    assert not exported["reused"] and exported["runtime"] == "onnxruntime-fp32"
    assert Path(exported["file"]).is_file() and exported["files"]["model.onnx"] > 0
    assert exported["folder"].startswith(onnx_env["VITDEX_HOME"])
    assert set(exported["agreement"]["per_space"]) == {"cls", "cls@2"}
    assert exported["agreement"]["min"] >= FP_BOUND
    again = as_json(run_vitdex("export-model", "--format", "onnx", "--json", env=onnx_env))
    assert again["reused"] and again["folder"] == exported["folder"]
    text = run_vitdex("export-model", "--format", "onnx", "--int8", env=onnx_env).stdout
    assert "as onnx int8" in text and "agreement of onnxruntime-int8" in text

    onnx_env["VITDEX_RUNTIME"] = "onnxruntime"
    indexed = run_vitdex("index", str(photos), env=onnx_env)
    assert "(onnxruntime-fp32)" in indexed.stdout
    assert "exporting" not in indexed.stderr  # the export made above is used
    status = as_json(run_vitdex("status", "--json", env=onnx_env))
    assert {(s["name"], s["runtime"], s["min_agreement"]) for s in status["spaces"]} == {
        ("cls", "onnxruntime-fp32", FP_BOUND),
        ("cls@2", "onnxruntime-fp32", FP_BOUND),
    }
    assert status["runtime"] == "onnxruntime"

    torch_env = _env(tmp_path, tiny_vit, "torch", "torch")
    run_vitdex("index", str(photos), env=torch_env)
    onnx_vectors = _vectors(onnx_env, monkeypatch)
    torch_vectors = _vectors(torch_env, monkeypatch)
    assert set(onnx_vectors) == set(torch_vectors) == {"cls", "cls@2"}
    for space, by_name in torch_vectors.items():
        assert set(by_name) == {f"p{i}.jpg" for i in range(5)}
        for name, want in by_name.items():
            assert float(np.dot(onnx_vectors[space][name], want)) >= FP_BOUND, (space, name)
