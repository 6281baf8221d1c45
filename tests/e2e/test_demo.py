"""``vitdex demo`` as a new user runs it: from the venv's script, with the venv not on PATH."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import as_json, run_vitdex

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent


def _without_venv(env: dict[str, str]) -> dict[str, str]:
    """``env`` over this process's, with the venv's bin folder taken off PATH."""
    merged = {**os.environ, **env}
    kept = [p for p in merged.get("PATH", "").split(os.pathsep) if Path(p) != VENV_BIN]
    merged["PATH"] = os.pathsep.join(kept)
    merged.pop("VIRTUAL_ENV", None)
    return merged


def test_demo_hint_runs_as_printed_without_venv_on_path(vitdex_env: dict[str, str]) -> None:
    script = VENV_BIN / "vitdex"
    if not script.is_file():
        pytest.skip("no vitdex console script beside this interpreter")
    cwd = VENV_BIN.parent.parent  # the folder holding the venv, as after `make demo`
    env = _without_venv(vitdex_env)
    shown = os.path.relpath(script, cwd)
    demo = subprocess.run(
        [shown, "demo", "--photos", "2"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert demo.returncode == 0, demo.stderr
    hint = next(
        line.strip() for line in demo.stdout.splitlines() if line.strip().endswith(" status")
    )
    assert f"{shown} status" in hint, hint
    # The hint carries its own home and model: drop them from the environment.
    env = {k: v for k, v in env.items() if k not in ("VITDEX_HOME", "VITDEX_MODEL")}
    status = subprocess.run(
        ["bash", "-c", hint], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert status.returncode == 0, status.stderr
    assert "indexed" in status.stdout.lower()


def test_demo_train_registers_a_checkpoint(vitdex_env: dict[str, str], tmp_path: Path) -> None:
    home = tmp_path / "demo"
    env = {k: v for k, v in vitdex_env.items() if k != "VITDEX_HOME"}
    proc = run_vitdex("--home", str(home), "demo", "--photos", "2", "--train", env=env, timeout=600)
    made = re.search(r"^checkpoint \d+: (.+)$", proc.stdout, re.M)
    assert made is not None, proc.stdout
    path = Path(made[1])
    assert path.is_file() and path.is_relative_to(home)
    sha = re.search(r"^sha256 ([0-9a-f]{64})$", proc.stdout, re.M)
    assert sha is not None
    shown = as_json(run_vitdex("--home", str(home), "checkpoints", "list", "--json", env=env))
    assert [c["sha256"] for c in shown["checkpoints"]] == [sha[1]]
