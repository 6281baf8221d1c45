"""The base model registry: versions, resolution checks, detection and loading."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from vitdex.errors import ConfigError, ModelLoadError, NotFoundError
from vitdex.training.bases import (
    BASE_VERSIONS,
    base_kind,
    check_base_available,
    check_resolution,
    detect_loaded_version,
    detect_version,
    detect_version_from_configs,
    get_version,
    load_base,
)

VERSIONS = ("sd15", "sd21-base", "sd21", "sdxl")


def test_registry_describes_each_version() -> None:
    assert tuple(BASE_VERSIONS) == VERSIONS
    table = {
        name: (v.resolution, v.prediction_type, len(v.text_encoders), v.full_finetune)
        for name, v in BASE_VERSIONS.items()
    }
    assert table == {
        "sd15": (512, "epsilon", 1, True),
        "sd21-base": (512, "epsilon", 1, True),
        "sd21": (768, "v_prediction", 1, True),
        "sdxl": (1024, "epsilon", 2, False),
    }
    assert get_version("sdxl").pipeline_class == "StableDiffusionXLPipeline"
    assert get_version("sd21").text_encoder_act == "gelu"
    assert get_version("sd15").to_dict()["min_resolution"] == 256
    with pytest.raises(ConfigError, match="unknown base model version 'sd3'"):
        get_version("sd3")


@pytest.mark.parametrize(
    ("version", "resolution", "ok"),
    [
        ("sd15", 512, True),
        ("sd15", 384, True),
        ("sd15", 768, False),
        ("sd15", 128, False),
        ("sd21-base", 768, False),
        ("sd21", 768, True),
        ("sd21", 512, True),
        ("sd21", 1024, False),
        ("sdxl", 1024, True),
        ("sdxl", 768, True),
        ("sdxl", 256, False),
    ],
)
def test_resolution_must_fit_the_version(version: str, resolution: int, ok: bool) -> None:
    if ok:
        check_resolution(version, resolution)
    else:
        with pytest.raises(ConfigError, match="force"):
            check_resolution(version, resolution)
    check_resolution(version, resolution, force=True)  # forcing accepts any multiple of 8


def test_768_on_sd15_is_explained() -> None:
    with pytest.raises(ConfigError) as info:
        check_resolution("sd15", 768)
    assert "768 px does not fit Stable Diffusion 1.5" in info.value.message
    assert "512" in info.value.message


def test_resolution_multiple_of_8_even_when_forced() -> None:
    with pytest.raises(ConfigError, match="multiple of 8"):
        check_resolution("sd15", 500, force=True)
    with pytest.raises(ConfigError, match="multiple of 8"):
        check_resolution("sd15", 0, force=True)


def test_detection_from_real_model_configs() -> None:
    """The signs the real hub checkpoints carry (values from their config files)."""
    sd15: dict[str, dict[str, Any] | None] = {
        "unet": {"cross_attention_dim": 768, "sample_size": 64},
        "scheduler": {"prediction_type": "epsilon"},
        "text_encoder": {"hidden_act": "quick_gelu"},
    }
    sd21: dict[str, dict[str, Any] | None] = {
        "unet": {"cross_attention_dim": 1024, "use_linear_projection": True, "sample_size": 96},
        "scheduler": {"prediction_type": "v_prediction"},
        "text_encoder": {"hidden_act": "gelu"},
    }
    sd21_base: dict[str, dict[str, Any] | None] = {
        "unet": {"cross_attention_dim": 1024, "use_linear_projection": True, "sample_size": 64},
        "scheduler": {"prediction_type": "epsilon"},
        "text_encoder": {"hidden_act": "gelu"},
    }
    sdxl: dict[str, dict[str, Any] | None] = {
        "model_index": {"_class_name": "StableDiffusionXLPipeline"},
        "unet": {"cross_attention_dim": 2048, "addition_embed_type": "text_time"},
        "text_encoder": {"hidden_act": "quick_gelu"},
        "text_encoder_2": {"hidden_act": "gelu"},
    }
    assert detect_version_from_configs(sd15) == "sd15"
    assert detect_version_from_configs(sd21) == "sd21"
    assert detect_version_from_configs(sd21_base) == "sd21-base"
    assert detect_version_from_configs(sdxl) == "sdxl"
    # No scheduler config: a 96-latent (768 px) SD 2 UNet is the v-prediction model.
    assert detect_version_from_configs({**sd21, "scheduler": None}) == "sd21"
    assert detect_version_from_configs({**sd21_base, "scheduler": None}) == "sd21-base"


@pytest.mark.parametrize("version", VERSIONS)
def test_detect_version_of_tiny_folders(
    tiny_sd_factory: Callable[[str], Path], version: str
) -> None:
    assert detect_version(tiny_sd_factory(version)) == version


def test_detect_version_needs_a_pipeline_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a diffusers pipeline folder"):
        detect_version(tmp_path)


def test_base_kind(tmp_path: Path, tiny_sd: Path) -> None:
    assert base_kind(tiny_sd) == "folder"
    assert base_kind("stabilityai/stable-diffusion-2-1") == "hub"
    assert base_kind("runwayml/stable-diffusion-v1-5") == "hub"
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"x")
    assert base_kind(ckpt) == "single_file"
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(ConfigError, match="not a checkpoint"):
        base_kind(notes)
    for missing in (tmp_path / "nope", "models/missing.safetensors", "./rel/dir", "a/b/c"):
        with pytest.raises(NotFoundError):
            base_kind(missing)


def test_load_folder_detects_the_version(tiny_sd_factory: Callable[[str], Path]) -> None:
    loaded = load_base(tiny_sd_factory("sd21"))
    assert loaded.version.name == "sd21"
    assert loaded.kind == "folder"
    assert loaded.prediction_type == "v_prediction"
    assert type(loaded.pipeline).__name__ == "StableDiffusionPipeline"
    assert detect_loaded_version(loaded.pipeline) == "sd21"


def test_load_sdxl_folder(tiny_sd_factory: Callable[[str], Path]) -> None:
    loaded = load_base(tiny_sd_factory("sdxl"), version="sdxl")
    assert type(loaded.pipeline).__name__ == "StableDiffusionXLPipeline"
    assert loaded.pipeline.text_encoder_2 is not None
    assert detect_loaded_version(loaded.pipeline) == "sdxl"


def test_wrong_version_is_refused_unless_forced(tiny_sd: Path) -> None:
    with pytest.raises(ConfigError, match=r"looks like Stable Diffusion 1\.5"):
        load_base(tiny_sd, version="sd21-base")
    forced = load_base(tiny_sd, version="sd21-base", force=True)
    assert forced.version.name == "sd21-base"
    assert forced.detected_version == "sd15"


def test_prediction_type_mismatch_is_refused(tmp_path: Path, tiny_sd: Path) -> None:
    # An SD 1 model whose scheduler predicts v: not what the sd15 entry says.
    folder = tmp_path / "vpred-sd15"
    shutil.copytree(tiny_sd, folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["prediction_type"] = "v_prediction"
    config_path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="predicts 'v_prediction'"):
        load_base(folder)
    assert load_base(folder, force=True).prediction_type == "v_prediction"


def test_hub_id_offline_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelLoadError) as info:
        load_base("someone/not-a-cached-model")
    message = info.value.message
    assert "not in the local Hugging Face cache" in message
    assert "HF_HUB_OFFLINE" in message
    assert "hf download someone/not-a-cached-model" in message


def test_uncached_hub_base_offline_names_the_ways_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Not diffusers' raw "root cause in the stacktrace above": the base, why, the fixes."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for attempt in (lambda: check_base_available("someone/uncached"), _load_uncached):
        with pytest.raises(ModelLoadError) as info:
            attempt()
        message = info.value.message
        assert message.startswith("cannot load the Stable Diffusion base 'someone/uncached'")
        assert "not in the local Hugging Face cache and the hub cannot be reached" in message
        assert "(HF_HUB_OFFLINE is set)" in message
        assert "--base FOLDER" in message and "--base-config FOLDER" in message
        assert "stacktrace" not in message
        assert info.value.exit_code == 3
    # Local bases and online mode are load_base's to judge.
    check_base_available(str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    check_base_available("someone/uncached")


def _load_uncached() -> None:
    load_base("someone/uncached", version="sd15")


def test_unreachable_hub_online_gets_the_same_ways_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Online but without a connection, diffusers' raw text is replaced the same way."""
    from vitdex.training import bases

    class Refusing:
        @staticmethod
        def from_pretrained(*_: object, **__: object) -> None:
            raise OSError(
                "Cannot load model someone/uncached: the model is not fully cached locally "
                "... Please check out the root cause in the stacktrace above."
            )

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(bases, "_pipeline_class", lambda _: Refusing)
    with pytest.raises(ModelLoadError) as info:
        _load_uncached()
    assert "the hub cannot be reached (no connection)" in info.value.message
    assert "--base FOLDER" in info.value.message and "stacktrace" not in info.value.message


def test_single_file_with_local_config(tmp_path: Path, tiny_sd: Path) -> None:
    from vitdex.training.convert import convert

    single = tmp_path / "tiny.safetensors"
    convert(tiny_sd, single)
    loaded = load_base(single, config=tiny_sd)
    assert loaded.kind == "single_file"
    assert loaded.version.name == "sd15"
    reference = load_base(tiny_sd).pipeline
    for name in ("unet", "vae", "text_encoder"):
        got = getattr(loaded.pipeline, name).state_dict()
        want = getattr(reference, name).state_dict()
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), name


def test_single_file_without_config_offline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_sd: Path
) -> None:
    from vitdex.training.convert import convert

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    single = tmp_path / "tiny.safetensors"
    convert(tiny_sd, single)
    with pytest.raises(ModelLoadError, match="pass a local diffusers folder"):
        load_base(single)


def test_broken_single_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="cannot read the checkpoint"):
        load_base(broken)
