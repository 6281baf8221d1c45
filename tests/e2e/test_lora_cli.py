"""`vitdex lora extract` end to end: real processes, real files, the registry they leave."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.helpers import as_json, run_vitdex
from vitdex.config import load_settings
from vitdex.db import checkpoints as db
from vitdex.training.bases import load_base
from vitdex.training.convert import convert
from vitdex.training.registry import open_sessions

pytestmark = pytest.mark.slow


def vitdex(*args: str, env: dict[str, str], code: int = 0) -> subprocess.CompletedProcess[str]:
    return run_vitdex(*args, env=env, code=code)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "VITDEX_HOME": str(tmp_path / "home"),
        "VITDEX_DATABASE_URL": f"sqlite:///{tmp_path / 'catalog.db'}",
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": "200",  # rich tables are not cut at 80 columns off a terminal
    }


def _trained_folder(base: Path, out: Path) -> Path:
    """``base`` with a rank-2 change in every UNet attention query (a "trained" model)."""
    pipe = load_base(base).pipeline
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, module in pipe.unet.named_modules():
            if name.endswith("attn1.to_q"):
                rows, cols = module.weight.shape
                module.weight += (
                    0.1 * torch.randn(rows, 2, generator=g) @ torch.randn(2, cols, generator=g)
                )
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def _register(env: dict[str, str], trained: Path, base: Path) -> None:
    """Register ``trained`` as checkpoint 1, "dog", of base ``base`` (as `vitdex convert
    --base-model` does; its own tests cover that command)."""
    settings = load_settings(home=Path(env["VITDEX_HOME"]), database_url=env["VITDEX_DATABASE_URL"])
    single = convert(trained, Path(env["VITDEX_HOME"]) / "checkpoints" / "dog.safetensors")
    with open_sessions(settings)() as session:
        db.create_checkpoint(
            session,
            name="dog",
            base_model=str(base),
            version=single.version,
            path=str(single.path),
            sha256=single.sha256,
            size_bytes=single.path.stat().st_size,
            file_format="safetensors",
        )
        session.commit()


def test_extract_show_list_delete(
    env: dict[str, str], tiny_sd_factory: Callable[[str], Path], tmp_path: Path
) -> None:
    base = tiny_sd_factory("sd15")
    trained = _trained_folder(base, tmp_path / "trained")
    _register(env, trained, base)
    made = vitdex("lora", "extract", "dog", "--rank", "2", "--device", "cpu", env=env)
    out = Path(env["VITDEX_HOME"]) / "loras" / "dog-lora2.safetensors"
    assert "loading the base" in made.stderr and "layers" in made.stderr  # progress
    assert made.stdout.startswith("lora 2 'dog-lora2': ready")
    assert f"file      {out}" in made.stdout
    assert "rank 2, from checkpoint 1" in made.stdout
    assert "100.00% of the difference" in made.stdout
    with safe_open(str(out), "pt") as fh:
        meta = fh.metadata()
        names = {k.split(".")[0] for k in fh.keys()}  # noqa: SIM118
    assert meta["ss_network_dim"] == "2" and meta["ss_base_model_version"] == "sd_v1"
    # Only the queries changed: one layer per attention block, no text encoder layers.
    assert names and all(n.endswith("attn1_to_q") for n in names)

    shown = as_json(vitdex("checkpoints", "show", "dog-lora2", "--json", env=env))
    assert (shown["kind"], shown["source_id"], shown["lora_rank"]) == ("lora", 1, 2)
    assert shown["base_model"] == str(base) and shown["version"] == "sd15"
    assert shown["files_present"]["path"] is True
    text = vitdex("checkpoints", "show", "2", env=env).stdout
    assert "rank 2, from checkpoint 1" in text and "config    " in text
    table = vitdex("checkpoints", "list", env=env).stdout
    assert "dog-lora2" in table and "lora" in table and "checkpoint" in table
    listed = as_json(vitdex("checkpoints", "list", "--kind", "lora", "--json", env=env))
    assert [c["name"] for c in listed["checkpoints"]] == ["dog-lora2"]

    # A file path with its base, full JSON on stdout; the same name again is a conflict.
    single = Path(as_json(vitdex("checkpoints", "show", "dog", "--json", env=env))["path"])
    by_file = as_json(
        vitdex(
            "lora",
            "extract",
            str(single),
            "--rank",
            "1",
            "--no-text-encoder",
            "--name",
            "by-file",
            "--out",
            str(tmp_path / "by-file.safetensors"),
            "--json",
            env=env,
        )
    )
    assert by_file["source_id"] == 1 and by_file["config"]["text_encoder"] is False
    clash = vitdex("lora", "extract", "dog", "--rank", "2", env=env, code=2)
    assert "already registered" in clash.stderr and "Traceback" not in clash.stderr

    gone = as_json(vitdex("checkpoints", "delete", "dog-lora2", "--files", "--json", env=env))
    assert gone["deleted_files"] == [str(out)] and not out.exists()
    assert single.exists()


def test_errors_are_one_line(
    env: dict[str, str], tiny_sd_factory: Callable[[str], Path], tmp_path: Path
) -> None:
    base = tiny_sd_factory("sd15")
    missing = vitdex("lora", "extract", "nope", "--rank", "4", env=env, code=2)
    assert "no checkpoint 'nope'" in missing.stderr and "Traceback" not in missing.stderr
    no_file = vitdex(
        "lora", "extract", str(tmp_path / "x.safetensors"), "--rank", "4", env=env, code=2
    )
    assert "no checkpoint file or folder at" in no_file.stderr
    bad_rank = vitdex("lora", "extract", "nope", "--rank", "0", env=env, code=2)
    assert "--rank" in bad_rank.stderr
    # A diffusers folder nobody registered: its base must be given.
    no_base = vitdex("lora", "extract", str(base), "--rank", "4", env=env, code=2)
    assert "give its base model (--base)" in no_base.stderr
    same = vitdex("lora", "extract", str(base), "--rank", "4", "--base", str(base), env=env, code=2)
    assert "does not differ" in same.stderr and "Traceback" not in same.stderr
    assert not (Path(env["VITDEX_HOME"]) / "loras").exists() or not any(
        (Path(env["VITDEX_HOME"]) / "loras").iterdir()
    )
