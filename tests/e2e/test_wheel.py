"""The built wheel works on its own: installed outside the source tree, it migrates a catalog.

An editable install hides what a wheel forgets (the Alembic scripts, py.typed), because the
source tree is there to fall back on. So the wheel is built from a copy of the sources,
installed without dependencies into a fresh virtualenv, and run from a folder outside the
repository. The dependencies come from this test's own environment through a ``.pth`` line:
a path named in a ``.pth`` file joins ``sys.path``, but the ``.pth`` files inside it are not
run, so the editable install's finder for the source tree stays out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from vitdex.db.engine import head_revision

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
_PURELIB = "import sysconfig; print(sysconfig.get_path('purelib'))"
#: Where the fresh interpreter finds vitdex and its migrations, and whether the source
#: tree's editable finder got in.
_WHERE = """
import json, sys, vitdex
from vitdex.db.engine import MIGRATIONS_DIR
print(json.dumps({
    "vitdex": vitdex.__file__,
    "migrations": str(MIGRATIONS_DIR),
    "editable": sorted(name for name in sys.modules if "__editable__" in name),
}))
"""


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command; its stdout, or the test fails with its stderr."""
    proc = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy so that no build/ or stale file of the tree gets in."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "vitdex", src / "vitdex", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    _run(
        sys.executable,
        *("-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"),
        *("--wheel-dir", out, src),
        cwd=src,
    )
    (built,) = out.glob("vitdex-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel installed and this environment's packages visible."""
    root = tmp_path_factory.mktemp("venv") / "env"
    python = root / "bin" / "python"
    _run(sys.executable, "-m", "venv", "--without-pip", root, cwd=root.parent)
    # Installed before the .pth exists, so pip sees no vitdex already there to skip or remove.
    _run(
        sys.executable,
        *("-m", "pip", "--python", python, "install", "--quiet", "--no-deps", wheel),
        cwd=root.parent,
    )
    site = Path(_run(python, "-c", _PURELIB, cwd=root).strip())
    ours = dict.fromkeys(sysconfig.get_path(key) for key in ("purelib", "platlib"))
    (site / "dev-dependencies.pth").write_text("".join(f"{path}\n" for path in ours))
    return root


def test_wheel_carries_migrations_and_types(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    migrations = ROOT / "vitdex" / "migrations"
    shipped = {
        path.relative_to(ROOT).as_posix()
        for path in migrations.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert {"vitdex/migrations/env.py", "vitdex/migrations/script.py.mako"} <= shipped
    assert any(name.startswith("vitdex/migrations/versions/") for name in shipped)
    assert not shipped - names, f"the wheel lacks {sorted(shipped - names)}"
    assert "vitdex/py.typed" in names


def test_installed_wheel_migrates_outside_the_tree(
    venv: Path, database_url: str, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    }
    env |= {"VITDEX_HOME": str(tmp_path / "home"), "VITDEX_DATABASE_URL": database_url}

    where = json.loads(_run(venv / "bin" / "python", "-c", _WHERE, cwd=elsewhere, env=env))
    assert Path(where["vitdex"]).is_relative_to(venv), where
    assert Path(where["migrations"]).is_relative_to(venv), where
    assert where["editable"] == [], where

    vitdex = venv / "bin" / "vitdex"
    upgraded = _run(vitdex, "db", "upgrade", cwd=elsewhere, env=env)
    assert upgraded.strip() == f"catalog schema: empty -> {head_revision()}"
    status = json.loads(_run(vitdex, "status", "--json", cwd=elsewhere, env=env))
    assert status["images"] == 0
    assert status["database"].startswith(database_url.split(":", 1)[0])
