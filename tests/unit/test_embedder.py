"""The ViT embedder, on tiny checkpoints built and saved by the tests (real loading code)."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.photos import render
from vitdex.config import DEFAULT_SPACES, ModelSettings
from vitdex.devices import default_device, default_precision
from vitdex.errors import ConfigError, ModelLoadError, NoClassifierError
from vitdex.indexer import models as models_module
from vitdex.indexer.embedder import Embedder, EmbedResult
from vitdex.indexer.spaces import SpaceSpec, resolve_spaces
from vitdex.testing.vit import (
    PRESETS,
    TINY_LABELS,
    TINY_LAYERS,
    VIT_BASE_PREPROCESSOR,
    build_random_vit,
    build_tiny_vit,
)

ALL_SPECS = ["cls", "mean", "cls@0", "cls@2", "cls@4", "cls@-1", "cls@-5", "mean@2", "mean@-2"]


@pytest.fixture(autouse=True)
def _private_hash_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Weight fingerprints are cached under XDG_CACHE_HOME; keep the user's cache out of it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def photos(count: int = 5, seed: int = 0) -> list[Image.Image]:
    """Photo-like RGB images of assorted sizes and aspect ratios."""
    sizes = [(64, 48), (48, 64), (100, 30), (33, 33), (120, 90), (20, 40), (77, 51)]
    return [Image.fromarray(render(sizes[i % len(sizes)], seed + i), "RGB") for i in range(count)]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.asarray((a * b).sum(axis=-1))


def assert_load_error(exc: pytest.ExceptionInfo[ModelLoadError], *needles: str) -> None:
    message = exc.value.message
    for needle in (*needles, "VITDEX_MODEL", "config.json", "model.safetensors"):
        assert needle in message, f"{needle!r} not in {message!r}"
    assert "preprocessor_config.json" in message
    assert "HF_HUB_OFFLINE unset" in message


# --------------------------------------------------------------------------- construction


def test_constructing_loads_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "not-there"
    embedder = Embedder(str(missing), spaces=["cls"])  # no error: nothing is read yet
    assert not embedder.loaded
    assert embedder.model_id == str(missing)
    assert embedder.device == torch.device("cpu")
    with pytest.raises(ModelLoadError):
        embedder.load()


def test_constructor_checks_arguments(tiny_vit: Path) -> None:
    with pytest.raises(ConfigError, match="invalid layer spec"):
        Embedder(str(tiny_vit), spaces=["cls@x"])
    with pytest.raises(ConfigError, match="at least one"):
        Embedder(str(tiny_vit), spaces=[])
    with pytest.raises(ConfigError, match="batch_size"):
        Embedder(str(tiny_vit), batch_size=0)
    with pytest.raises(ConfigError, match="precision"):
        Embedder(str(tiny_vit), precision="int4")
    assert Embedder(str(tiny_vit), spaces=["cls", " cls@2", "cls@2"]).spaces == ["cls", "cls@2"]


def test_load_happens_once_across_threads(tiny_vit: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_load = Embedder._load

    def counting_load(self: Embedder) -> None:
        calls.append(1)
        time.sleep(0.2)  # keep the other threads waiting on the lock
        real_load(self)

    monkeypatch.setattr(Embedder, "_load", counting_load)
    embedder = Embedder(str(tiny_vit), spaces=["cls"], precision="fp32")
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            embedder.embed(photos(1))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(calls) == 1
    assert embedder.loaded


def test_from_settings(tiny_vit: Path) -> None:
    settings = ModelSettings(
        model=str(tiny_vit), spaces=["cls", "mean@1"], precision="fp32", batch_size=3
    )
    embedder = Embedder.from_settings(settings)
    assert embedder.spaces == ["cls", "mean@1"]
    assert embedder.batch_size == 3
    assert embedder.precision == "fp32"
    assert embedder.dtype == torch.float32
    assert [s.name for s in embedder.space_specs()] == ["cls", "mean@1"]


# --------------------------------------------------------------------------- vectors


def test_vectors_are_unit_norm_float32(tiny_vit: Path) -> None:
    embedder = Embedder(str(tiny_vit), spaces=ALL_SPECS, precision="fp32")
    result = embedder.embed(photos(5))
    assert isinstance(result, EmbedResult)
    assert list(result.vectors) == ALL_SPECS
    for vectors in result.vectors.values():
        assert vectors.shape == (5, 32)
        assert vectors.dtype == np.float32
        assert vectors.flags.c_contiguous
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert result.logits is not None
    assert result.logits.shape == (5, TINY_LABELS)
    assert result.logits.dtype == np.float32


def test_every_layer_spec_matches_the_hidden_states(tiny_vit: Path) -> None:
    import transformers

    vit_model: Any = transformers.ViTModel
    embedder = Embedder(str(tiny_vit), spaces=ALL_SPECS, precision="fp32")
    images = photos(4)
    result = embedder.embed(images)
    model = vit_model.from_pretrained(tiny_vit, add_pooling_layer=False).eval()
    with torch.inference_mode():
        out = model(pixel_values=embedder.preprocess(images), output_hidden_states=True)
    hidden = out.hidden_states
    assert len(hidden) == TINY_LAYERS + 1
    expected = {
        "cls": out.last_hidden_state[:, 0],
        "mean": out.last_hidden_state[:, 1:].mean(1),
        "cls@0": hidden[0][:, 0],
        "cls@2": hidden[2][:, 0],
        "cls@4": hidden[4][:, 0],
        "cls@-1": hidden[4][:, 0],
        "cls@-5": hidden[0][:, 0],
        "mean@2": hidden[2][:, 1:].mean(1),
        "mean@-2": hidden[3][:, 1:].mean(1),
    }
    for name, tensor in expected.items():
        want = torch.nn.functional.normalize(tensor, dim=1).numpy()
        np.testing.assert_allclose(result.vectors[name], want, atol=1e-5, err_msg=name)
    # The final [CLS] is layer-normed; layer 4's raw [CLS] is not the same vector.
    assert not np.allclose(result.vectors["cls"], result.vectors["cls@4"], atol=1e-3)
    # Negative K counts from the end.
    np.testing.assert_array_equal(result.vectors["cls@-1"], result.vectors["cls@4"])
    np.testing.assert_array_equal(result.vectors["cls@-5"], result.vectors["cls@0"])


@pytest.mark.parametrize("spec", ["cls@5", "cls@-6", "mean@99"])
def test_layer_out_of_range_names_the_layer_count(tiny_vit: Path, spec: str) -> None:
    embedder = Embedder(str(tiny_vit), spaces=["cls", spec])
    with pytest.raises(ConfigError, match=f"model has {TINY_LAYERS} layers"):
        embedder.load()


def test_batch_splitting_gives_the_same_vectors(tiny_vit: Path) -> None:
    images = photos(7)
    big = Embedder(str(tiny_vit), spaces=["cls", "mean@2"], precision="fp32", batch_size=16)
    small = Embedder(str(tiny_vit), spaces=["cls", "mean@2"], precision="fp32", batch_size=3)
    a, b = big.embed(images), small.embed(images)
    for name in ("cls", "mean@2"):
        np.testing.assert_allclose(a.vectors[name], b.vectors[name], atol=1e-5)
    assert a.logits is not None and b.logits is not None
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-4)
    one_by_one = np.concatenate([small.embed([im]).vectors["cls"] for im in images])
    np.testing.assert_allclose(one_by_one, a.vectors["cls"], atol=1e-5)


def test_embed_pixels_matches_embed(tiny_vit: Path) -> None:
    images = photos(5)
    embedder = Embedder(str(tiny_vit), spaces=["cls", "mean@1"], precision="fp32", batch_size=2)
    a = embedder.embed(images)
    b = embedder.embed_pixels(embedder.preprocess(images))
    for name in a.vectors:
        np.testing.assert_array_equal(a.vectors[name], b.vectors[name])


def test_compile_comes_from_the_settings(tiny_vit: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not Embedder(str(tiny_vit)).compile
    monkeypatch.setenv("VITDEX_COMPILE", "1")
    # Below the edges nothing reads the environment: the settings carry the flag.
    assert not Embedder(str(tiny_vit)).compile
    assert Embedder.from_settings(ModelSettings(model=str(tiny_vit))).compile
    assert not Embedder.from_settings(ModelSettings(model=str(tiny_vit), compile=False)).compile


@pytest.mark.slow
def test_compiled_model_gives_the_same_vectors(tiny_vit: Path) -> None:
    images = photos(5)
    eager = Embedder(str(tiny_vit), spaces=["cls", "cls@2"], precision="fp32", batch_size=4)
    compiled = Embedder(
        str(tiny_vit), spaces=["cls", "cls@2"], precision="fp32", batch_size=4, compile=True
    )
    a, b = eager.embed(images), compiled.embed(images)  # 4 + a padded batch of 1
    for name in a.vectors:
        assert b.vectors[name].shape == (5, 32)
        np.testing.assert_allclose(a.vectors[name], b.vectors[name], atol=1e-4)
    assert a.logits is not None and b.logits is not None
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-3)


def test_empty_input(tiny_vit: Path) -> None:
    result = Embedder(str(tiny_vit), spaces=["cls"], precision="fp32").embed([])
    assert result.vectors["cls"].shape == (0, 32)
    assert result.logits is not None and result.logits.shape == (0, TINY_LABELS)


# --------------------------------------------------------------------------- fidelity


def test_cls_matches_transformers_processor_and_forward(tmp_path: Path) -> None:
    import transformers

    # Loosely typed: transformers' stubs leave these partly untyped.
    auto_processor: Any = transformers.AutoImageProcessor
    vit_model: Any = transformers.ViTModel
    vit_classifier: Any = transformers.ViTForImageClassification

    folder = build_random_vit(tmp_path / "vit64", preset="tiny", num_labels=5, image_size=64)
    photo = Image.fromarray(render((640, 480), seed=3), "RGB")
    embedder = Embedder(str(folder), spaces=["cls"], precision="fp32")
    result = embedder.embed([photo])

    processor = auto_processor.from_pretrained(folder)
    pixels = processor(images=[photo], return_tensors="pt")["pixel_values"]
    np.testing.assert_allclose(embedder.preprocess([photo]).numpy(), pixels.numpy(), atol=1e-5)
    model = vit_model.from_pretrained(folder, add_pooling_layer=False).eval()
    with torch.inference_mode():
        reference = model(pixel_values=pixels).last_hidden_state[:, 0]
        logits = vit_classifier.from_pretrained(folder).eval()(pixels).logits
    assert cosine(result.vectors["cls"], reference.numpy())[0] >= 0.999
    assert result.logits is not None
    np.testing.assert_allclose(result.logits, logits.numpy(), atol=1e-4)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_non_rgb_images_are_converted(tiny_vit: Path, mode: str) -> None:
    rgb = Image.fromarray(render((50, 40), seed=1), "RGB")
    embedder = Embedder(str(tiny_vit), spaces=["cls"], precision="fp32")
    converted = rgb.convert(mode)
    np.testing.assert_allclose(
        embedder.preprocess([converted]).numpy(),
        embedder.preprocess([converted.convert("RGB")]).numpy(),
    )


def test_shortest_edge_crop_and_bicubic_follow_the_processor(tmp_path: Path) -> None:
    import transformers

    auto_processor: Any = transformers.AutoImageProcessor
    folder = build_random_vit(tmp_path / "crop", preset="tiny", num_labels=None, image_size=48)
    config = {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": 56},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": 48, "width": 48},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    images = photos(4)
    embedder = Embedder(str(folder), spaces=["cls"], precision="fp32")
    assert embedder.input_size == (48, 48)
    processor = auto_processor.from_pretrained(folder)
    want = processor(images=images, return_tensors="pt")["pixel_values"]
    np.testing.assert_allclose(embedder.preprocess(images).numpy(), want.numpy(), atol=1e-5)
    record = embedder.space_specs()[0].preprocessing
    assert record["size"] == {"shortest_edge": 56}
    assert record["crop_size"] == {"height": 48, "width": 48}
    assert record["resample"] == 3


def test_missing_preprocessor_config_falls_back_to_vit_defaults(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = build_tiny_vit(tmp_path / "noprep")
    reference = Embedder(str(folder), spaces=["cls"], precision="fp32").embed(photos(2))
    (folder / "preprocessor_config.json").unlink()
    with caplog.at_level(logging.WARNING, logger="vitdex.indexer.models"):
        embedder = Embedder(str(folder), spaces=["cls"], precision="fp32")
        result = embedder.embed(photos(2))
    assert "no preprocessor_config.json" in caplog.text
    assert embedder.input_size == (32, 32)
    np.testing.assert_allclose(result.vectors["cls"], reference.vectors["cls"], atol=1e-6)


def test_bf16_agrees_with_fp32(tiny_vit: Path) -> None:
    images = photos(6)
    fp32 = Embedder(str(tiny_vit), spaces=["cls", "cls@2", "mean"], precision="fp32")
    bf16 = Embedder(str(tiny_vit), spaces=["cls", "cls@2", "mean"], precision="bf16")
    assert bf16.dtype == torch.bfloat16
    a, b = fp32.embed(images), bf16.embed(images)
    for name in a.vectors:
        assert b.vectors[name].dtype == np.float32
        assert cosine(a.vectors[name], b.vectors[name]).min() >= 0.99, name


@pytest.mark.slow
def test_bf16_agrees_with_fp32_on_vit_base(tmp_path: Path) -> None:
    folder = build_random_vit(tmp_path / "base", preset="base", num_labels=None)
    images = photos(3)
    fp32 = Embedder(str(folder), spaces=["cls", "cls@8"], precision="fp32").embed(images)
    bf16 = Embedder(str(folder), spaces=["cls", "cls@8"], precision="bf16").embed(images)
    for name in fp32.vectors:
        assert fp32.vectors[name].shape == (3, 768)
        assert cosine(fp32.vectors[name], bf16.vectors[name]).min() >= 0.99, name


# --------------------------------------------------------------------------- classifier


def test_classifier_checkpoint(tiny_vit: Path) -> None:
    embedder = Embedder(str(tiny_vit), spaces=["cls"])
    assert embedder.has_classifier
    assert embedder.id2label == {i: f"label {i}" for i in range(TINY_LABELS)}


def test_headless_checkpoint_has_no_logits(tiny_vit_headless: Path) -> None:
    embedder = Embedder(str(tiny_vit_headless), spaces=["cls", "cls@2"], precision="fp32")
    result = embedder.embed(photos(3))
    assert not embedder.has_classifier
    assert result.logits is None
    assert embedder.id2label == {}
    assert result.vectors["cls"].shape == (3, 32)
    with pytest.raises(NoClassifierError):
        embedder.top_labels(np.zeros((1, 2), dtype=np.float32))


def test_checkpoint_claiming_a_head_it_lacks_is_not_classified(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = build_tiny_vit(tmp_path / "liar", classifier=False)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["ViTForImageClassification"]
    (folder / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        embedder = Embedder(str(folder), spaces=["cls"], precision="fp32")
        assert not embedder.has_classifier
    assert "no trained classifier" in caplog.text
    assert embedder.embed(photos(1)).logits is None


def test_top_labels(tiny_vit: Path) -> None:
    embedder = Embedder(str(tiny_vit), spaces=["cls"], precision="fp32")
    result = embedder.embed(photos(4))
    assert result.logits is not None
    top = embedder.top_labels(result.logits, k=3)
    assert len(top) == 4
    for row, logits in zip(top, result.logits, strict=True):
        assert len(row) == 3
        probs = [p for _, p in row]
        assert probs == sorted(probs, reverse=True)
        assert 0 < sum(probs) <= 1 + 1e-9
        exp = np.exp(logits.astype(np.float64) - logits.max())
        best = int(np.argmax(logits))
        assert row[0][0] == f"label {best}"
        assert row[0][1] == pytest.approx(exp[best] / exp.sum(), rel=1e-6)
    everything = embedder.top_labels(result.logits[0], k=100)[0]  # one row, k clipped
    assert len(everything) == TINY_LABELS
    assert sum(p for _, p in everything) == pytest.approx(1.0)
    crafted = np.array([[0.0, 5.0, 1.0] + [-9.0] * (TINY_LABELS - 3)], dtype=np.float32)
    assert [name for name, _ in embedder.top_labels(crafted, k=2)[0]] == ["label 1", "label 2"]


# --------------------------------------------------------------------------- relative depth


def test_relative_depth_names_its_space_by_the_layer_it_resolves_to(tiny_vit: Path) -> None:
    embedder = Embedder(str(tiny_vit), spaces=["cls", "cls@2/3", "mean@1/2"], precision="fp32")
    # Resolved from config.json alone: 2/3 of 4 layers is layer 3 (8/3 rounded).
    known = embedder.known_spaces()
    assert not embedder.loaded
    assert known is not None
    assert [(s.spec, s.name, s.layer) for s in known] == [
        ("cls", "cls", None),
        ("cls@2/3", "cls@3", 3),
        ("mean@1/2", "mean@2", 2),
    ]
    assert embedder.spaces == ["cls", "cls@2/3", "mean@1/2"]
    specs = embedder.space_specs()
    assert [(s.name, s.layer) for s in specs] == [
        ("cls", "cls"),
        ("cls@3", "cls@3"),
        ("mean@2", "mean@2"),
    ]
    images = photos(3)
    result = embedder.embed(images)
    assert set(result.vectors) == {"cls", "cls@3", "mean@2"}
    absolute = Embedder(str(tiny_vit), spaces=["cls@3", "mean@2"], precision="fp32").embed(images)
    for name in ("cls@3", "mean@2"):
        np.testing.assert_array_equal(result.vectors[name], absolute.vectors[name])


def test_relative_and_absolute_spec_of_one_layer_fill_one_space(tiny_vit: Path) -> None:
    embedder = Embedder(str(tiny_vit), spaces=["cls@3", "cls@2/3"], precision="fp32")
    assert [s.name for s in embedder.space_specs()] == ["cls@3"]
    assert set(embedder.embed(photos(2)).vectors) == {"cls@3"}


def test_two_thirds_of_vit_base_is_layer_8(tmp_path: Path) -> None:
    """The default spaces keep the names ViT-B/16 catalogs were built with: cls, cls@8."""
    from transformers import ViTConfig

    folder = tmp_path / "vit-b16"
    shape: dict[str, Any] = dict(PRESETS["base"])
    ViTConfig(**shape).save_pretrained(folder)  # config.json is all it reads
    embedder = Embedder(str(folder))
    assert embedder.spaces == list(DEFAULT_SPACES) == ["cls", "cls@2/3"]
    known = embedder.known_spaces()
    assert known is not None
    assert [(s.name, s.layer) for s in known] == [("cls", None), ("cls@8", 8)]


@pytest.mark.parametrize(
    ("spec", "num_layers", "name", "layer"),
    [
        ("cls@2/3", 12, "cls@8", 8),
        ("cls@2/3", 24, "cls@16", 16),
        ("cls@2/3", 4, "cls@3", 3),
        ("cls@2/3", 1, "cls@1", 1),
        ("mean@1/2", 5, "mean@3", 3),  # halves round up
        ("cls@1/1", 6, "cls@6", 6),
        ("cls@1/100", 12, "cls@1", 1),  # never the patch embeddings
        ("cls@4/6", 12, "cls@8", 8),
    ],
)
def test_relative_depth_resolution(spec: str, num_layers: int, name: str, layer: int) -> None:
    [resolved] = resolve_spaces([spec], num_layers)
    assert (resolved.spec, resolved.name, resolved.layer) == (spec, name, layer)


def test_known_spaces_need_the_checkpoint_on_this_machine(tmp_path: Path) -> None:
    assert Embedder(str(tmp_path / "absent"), spaces=["cls@2/3"]).known_spaces() is None
    with pytest.raises(ConfigError, match="model has 4 layers"):
        Embedder(str(build_tiny_vit(tmp_path / "t")), spaces=["cls@9"]).known_spaces()


# --------------------------------------------------------------------------- specs


def test_space_specs(tiny_vit: Path) -> None:
    embedder = Embedder(str(tiny_vit), spaces=["cls", "cls@-1", "mean@2"], precision="fp32")
    specs = embedder.space_specs()
    assert [s.name for s in specs] == ["cls", "cls@-1", "mean@2"]
    for spec in specs:
        assert isinstance(spec, SpaceSpec)
        assert spec.layer == spec.name
        assert spec.model_id == str(tiny_vit)
        assert spec.model_revision.startswith("sha256:")
        assert spec.dim == 32
        assert spec.metric == "ip"
        prep = spec.preprocessing
        assert prep["size"] == {"height": 32, "width": 32}
        assert prep["resample"] == 2
        assert prep["rescale_factor"] == pytest.approx(1 / 255)
        assert prep["image_mean"] == prep["image_std"] == [0.5, 0.5, 0.5]
        assert prep["do_resize"] and prep["do_rescale"] and prep["do_normalize"]
        assert prep["draft"] is True
        json.dumps(prep)  # stored as JSON in the catalog
    assert embedder.input_size == (32, 32)
    assert embedder.num_layers == TINY_LAYERS


def test_fingerprint_is_stable_and_follows_the_weights(tmp_path: Path) -> None:
    folder = build_tiny_vit(tmp_path / "fp", seed=0)
    first = Embedder(str(folder), spaces=["cls"]).space_specs()[0].model_revision
    assert (tmp_path / "xdg-cache" / "vitdex" / "file-hashes.json").is_file()
    again = Embedder(str(folder), spaces=["cls"]).space_specs()[0].model_revision
    assert again == first
    build_tiny_vit(folder, seed=1)  # new weights in the same folder
    changed = Embedder(str(folder), spaces=["cls"]).space_specs()[0].model_revision
    assert changed != first
    given = Embedder(str(folder), revision="v1", spaces=["cls"]).space_specs()[0]
    assert given.model_revision == "v1"


def test_relative_folder_becomes_absolute_model_id(
    tiny_vit: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tiny_vit.parent)
    embedder = Embedder(f"./{tiny_vit.name}", spaces=["cls"], precision="fp32")
    assert embedder.model_id == str(tiny_vit)
    assert embedder.embed(photos(1)).vectors["cls"].shape == (1, 32)


def _fake_hub_cache(cache: Path, repo: str, source: Path) -> str:
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in source.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    return commit


def test_hub_id_loads_from_the_local_cache_offline(
    tiny_vit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    commit = _fake_hub_cache(tmp_path / "hub", "someone/tiny-vit", tiny_vit)
    embedder = Embedder("someone/tiny-vit", spaces=["cls", "cls@2/3"], precision="fp32")
    # The cached config.json names the spaces without loading (or downloading) anything.
    assert [s.name for s in embedder.known_spaces() or []] == ["cls", "cls@3"]
    assert not embedder.loaded
    spec = embedder.space_specs()[0]
    assert spec.model_id == "someone/tiny-vit"
    assert spec.model_revision == commit
    assert embedder.has_classifier


# --------------------------------------------------------------------------- failures


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as exc:
        Embedder(str(tmp_path / "nope")).load()
    assert_load_error(exc, "does not exist")


def test_folder_without_weights(tmp_path: Path, tiny_vit: Path) -> None:
    folder = tmp_path / "config-only"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_vit / "config.json").read_text())
    with pytest.raises(ModelLoadError) as exc:
        Embedder(str(folder)).load()
    assert_load_error(exc, "has no model.safetensors")


def test_folder_without_config(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(ModelLoadError) as exc:
        Embedder(str(folder)).load()
    assert_load_error(exc, "has no config.json")


def test_broken_weights(tmp_path: Path) -> None:
    folder = build_tiny_vit(tmp_path / "broken")
    (folder / "model.safetensors").write_bytes(b"\x00not a safetensors file" * 10)
    with pytest.raises(ModelLoadError) as exc:
        Embedder(str(folder), spaces=["cls"]).load()
    assert_load_error(exc, "cannot be read")


def test_weights_of_another_model(tmp_path: Path) -> None:
    folder = build_tiny_vit(tmp_path / "mixed")
    other = build_random_vit(tmp_path / "other", preset="tiny", num_labels=None, image_size=64)
    (folder / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(ModelLoadError) as exc:
        Embedder(str(folder), spaces=["cls"]).load()
    assert_load_error(exc)


def test_bogus_hub_id_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as exc:
        Embedder("nobody/no-such-vit-model", spaces=["cls"]).load()
    assert time.monotonic() - started < 10
    assert_load_error(exc, "not in the local Hugging Face cache", "HF_HUB_OFFLINE is set")


def test_unreachable_hub_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    # Port 9 (discard) on loopback refuses at once: an offline machine, without the wait.
    monkeypatch.setattr(models_module, "hub_endpoint", lambda: "http://127.0.0.1:9")
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as exc:
        Embedder("nobody/no-such-vit-model", spaces=["cls"]).load()
    assert time.monotonic() - started < 10
    assert_load_error(exc, "cannot be reached")


def test_not_a_vit(tmp_path: Path, tiny_vit: Path) -> None:
    folder = tmp_path / "bert"
    folder.mkdir()
    for file in tiny_vit.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "bert"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="not a ViT"):
        Embedder(str(folder), spaces=["cls"]).load()


# --------------------------------------------------------------------------- hardware


def test_default_device_and_precision() -> None:
    device = default_device()
    if not torch.cuda.is_available():
        assert device.type in {"cpu", "mps"}
    cpu = default_precision("cpu")
    from vitdex.devices import cpu_flags

    flags = cpu_flags()
    assert cpu == ("bf16" if flags & {"avx512_bf16", "amx_bf16"} else "fp32")
    assert default_precision(torch.device("cpu")) == cpu


def test_build_random_vit_presets(tmp_path: Path) -> None:
    from transformers import ViTConfig

    folder = build_random_vit(tmp_path / "t", preset="tiny", num_labels=3, seed=5)
    config = ViTConfig.from_pretrained(folder)
    assert config.architectures == ["ViTForImageClassification"]
    assert config.id2label == {0: "label 0", 1: "label 1", 2: "label 2"}
    prep = json.loads((folder / "preprocessor_config.json").read_text())
    assert prep == {**VIT_BASE_PREPROCESSOR, "size": {"height": 32, "width": 32}}
    same = build_random_vit(tmp_path / "t2", preset="tiny", num_labels=3, seed=5)
    assert (folder / "model.safetensors").read_bytes() == (same / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="preset"):
        build_random_vit(tmp_path / "x", preset="huge")


def test_warm_up_runs_one_full_batch_once_and_changes_no_vector(tiny_vit: Path) -> None:
    """The indexer warms the model up before its first batch: one full batch shape, run
    once per embedder (the second call is free), and the vectors are those of a cold one."""
    photos = [Image.fromarray(render((96, 80), seed), "RGB") for seed in range(3)]
    cold = Embedder(str(tiny_vit), device="cpu", precision="fp32", batch_size=4).embed(photos)
    embedder = Embedder(str(tiny_vit), device="cpu", precision="fp32", batch_size=4)
    shapes: list[tuple[int, ...]] = []
    run = embedder._run

    def counting(pixels: torch.Tensor) -> Any:
        shapes.append(tuple(pixels.shape))
        return run(pixels)

    embedder._run = counting  # type: ignore[method-assign]
    embedder.warm_up()
    assert embedder.loaded
    assert shapes and all(s[0] == 4 for s in shapes)
    warmed = len(shapes)
    embedder.warm_up()
    assert len(shapes) == warmed
    warm = embedder.embed(photos)
    for name, vectors in cold.vectors.items():
        np.testing.assert_allclose(warm.vectors[name], vectors, atol=1e-6)
