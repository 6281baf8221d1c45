"""`vitdex convert` and `vitdex checkpoints` end to end: real processes, real files."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image as PILImage

from tests.helpers import as_json, run_vitdex

pytestmark = pytest.mark.slow


def vitdex(*args: str, env: dict[str, str], code: int = 0) -> subprocess.CompletedProcess[str]:
    return run_vitdex(*args, env=env, code=code)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "VITDEX_HOME": str(tmp_path / "home"),
        "VITDEX_DATABASE_URL": f"sqlite:///{tmp_path / 'catalog.db'}",
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": "160",  # rich tables are not cut at 80 columns off a terminal
    }


def test_convert_list_show_delete(
    env: dict[str, str], tiny_sd_factory: Callable[[str], Path]
) -> None:
    source = tiny_sd_factory("sd21-base")
    made = vitdex(
        "convert",
        str(source),
        "--half",
        "--ckpt",
        "--name",
        "mine",
        "--sample-steps",
        "2",
        env=env,
    )
    # Into VITDEX_HOME by default, with the v2 YAML beside it; progress goes to stderr.
    out = Path(env["VITDEX_HOME"]) / "checkpoints" / "mine.ckpt"
    assert f"file      {out}" in made.stdout and "(ckpt, fp16)" in made.stdout
    assert "comparing tensors" in made.stderr and "rendering" in made.stderr
    state = torch.load(out, weights_only=True)["state_dict"]
    assert state["first_stage_model.encoder.conv_in.weight"].dtype == torch.float16
    params = yaml.safe_load(out.with_suffix(".yaml").read_text())["model"]["params"]
    assert "parameterization" not in params  # epsilon: v2-inference.yaml, not -v

    shown = as_json(vitdex("checkpoints", "show", "mine", "--json", env=env))
    assert (shown["version"], shown["status"], shown["format"], shown["half"]) == (
        "sd21-base",
        "ready",
        "ckpt",
        True,
    )
    assert shown["path"] == str(out) and shown["yaml_path"] == str(out.with_suffix(".yaml"))
    assert shown["files_present"] == {"path": True, "yaml_path": True, "sample_path": True}
    assert shown["sha256"] in vitdex("checkpoints", "show", str(shown["id"]), env=env).stdout
    listed = as_json(vitdex("checkpoints", "list", "--json", env=env))
    assert [c["name"] for c in listed["checkpoints"]] == ["mine"]
    table = vitdex("checkpoints", "list", env=env).stdout
    assert "mine" in table and "ckpt fp16" in table and "sd21-base" in table

    gone = as_json(vitdex("checkpoints", "delete", "mine", "--files", "--json", env=env))
    assert sorted(gone["deleted_files"]) == sorted(
        [str(out), str(out.with_suffix(".yaml")), shown["sample_path"]]
    )
    assert list(out.parent.iterdir()) == []
    assert "no checkpoints registered" in vitdex("checkpoints", "list", env=env).stdout


def test_errors_are_one_line_with_an_exit_code(
    env: dict[str, str], tiny_sd_factory: Callable[[str], Path], tmp_path: Path
) -> None:
    missing_run = vitdex("convert", "999", env=env, code=2)
    assert missing_run.stderr.strip() == "error: no training run with id 999"
    not_a_model = vitdex("convert", str(tmp_path), env=env, code=2)
    assert "not a diffusers folder" in not_a_model.stderr
    out = tmp_path / "y.safetensors"
    wrong = vitdex(
        "convert",
        str(tiny_sd_factory("sd15")),
        "--version",
        "sdxl",
        "--out",
        str(out),
        env=env,
        code=2,
    )
    assert "holds an sd15 model" in wrong.stderr and not out.exists()
    nope = vitdex("checkpoints", "delete", "nope", env=env, code=2)
    assert nope.stderr.strip() == "error: no checkpoint named 'nope'"


def test_sample_grid_options(env: dict[str, str], tiny_sd_factory: Callable[[str], Path]) -> None:
    source = str(tiny_sd_factory("sd15"))
    folder = Path(env["VITDEX_HOME"]) / "checkpoints"

    bare = vitdex("convert", source, "--name", "bare", "--no-sample", env=env)
    assert "comparing tensors" in bare.stderr  # still validated
    assert "rendering the sample grid" not in bare.stderr
    assert "\n  sample " not in bare.stdout
    row = as_json(vitdex("checkpoints", "show", "bare", "--json", env=env))
    assert row["status"] == "ready" and row["sample_path"] is None
    assert not list(folder.glob("*.png"))

    small = as_json(
        vitdex(
            "convert",
            source,
            "--name",
            "small",
            "--sample-size",
            "32",
            "--sample-steps",
            "1",
            "--json",
            env=env,
        )
    )
    grid = PILImage.open(small["sample_path"])
    assert grid.size == (64, 64)  # 2x2 images of 32 px
    parameters = grid.info["parameters"]
    assert "Steps: 1," in parameters and "Size: 32x32," in parameters

    # A size the VAE cannot produce is refused before anything is written.
    odd = vitdex("convert", source, "--name", "odd", "--sample-size", "33", env=env, code=2)
    assert "sample size 33 px: use a multiple of 2" in odd.stderr
    assert not (folder / "odd.safetensors").exists()
    listed = as_json(vitdex("checkpoints", "list", "--json", env=env))
    assert sorted(c["name"] for c in listed["checkpoints"]) == ["bare", "small"]
