"""``vitdex model fetch``: a clear exit 3 offline, and the load check on local folders."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import run_vitdex

UNREACHABLE = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2"}


@pytest.mark.parametrize("offline", ["1", ""])
def test_fetch_from_hub_without_network_exits_3(tmp_path: Path, offline: str) -> None:
    env = {**UNREACHABLE, "HF_HUB_OFFLINE": offline}
    proc = run_vitdex(
        "model", "fetch", "google/vit-base-patch16-224", "--to", str(tmp_path / "m"),
        env=env, code=3, timeout=120,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr
    assert "cannot fetch 'google/vit-base-patch16-224'" in proc.stderr
    assert "connected machine" in proc.stderr


def test_fetch_vit_folder_checks_and_prints_setting(tiny_vit: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_vit, tmp_path / "src")
    (tmp_path / "src" / "pytorch_model.bin").write_bytes(b"not fetched")
    target = tmp_path / "vit"
    proc = run_vitdex("model", "fetch", str(tmp_path / "src"), "--to", str(target))
    assert sorted(p.name for p in target.iterdir()) == sorted(
        p.name for p in tiny_vit.iterdir() if p.name in ("config.json", "model.safetensors",
                                                          "preprocessor_config.json")
    )  # fmt: skip
    assert f"VITDEX_MODEL={target.resolve()}" in proc.stdout


def test_fetch_sd_folder_checks_and_prints_base(
    tiny_sd_factory: Callable[[str], Path], tmp_path: Path
) -> None:
    target = tmp_path / "sd"
    proc = run_vitdex("model", "fetch", str(tiny_sd_factory("sd15")), "--to", str(target))
    assert (target / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert f"--base {target.resolve()}" in proc.stdout


def test_fetch_refuses_a_folder_that_does_not_load(tiny_vit: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(tiny_vit, src)
    (src / "model.safetensors").write_bytes(b"truncated download")
    proc = run_vitdex("model", "fetch", str(src), "--to", str(tmp_path / "m"), code=3)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")
