"""The layer contracts in pyproject.toml ([tool.importlinter]) hold, and do catch a breach.

`make lint` runs lint-imports over the tree; these tests run it over a copy, once as it is
and once with an import that goes up the layers added, to show that the contracts are not
met by accident (a typo in a module name would leave a contract checking nothing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_LINT = "from importlinter.cli import lint_imports_command; lint_imports_command()"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the package and of the contracts, to break at will."""
    shutil.copytree(
        ROOT / "vitdex", tmp_path / "vitdex", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports over ``tree``: the copy comes first on the path, so it is what gets read."""
    return subprocess.run(
        [sys.executable, "-c", _LINT, "--no-cache", "--no-logo", str(tree / "pyproject.toml")],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_package_keeps_its_layers(tree: Path) -> None:
    result = _lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("from vitdex.jobs import queue", "vitdex.db.models -> vitdex.jobs.queue"),
        ("import vitdex.cli", "vitdex.db.models -> vitdex.cli"),
    ],
)
def test_an_import_up_the_layers_breaks_the_contract(tree: Path, line: str, named: str) -> None:
    models = tree / "vitdex" / "db" / "models.py"
    source = models.read_text()
    models.write_text(f"{source}{line}\n")
    number = len(source.splitlines()) + 1

    result = _lint(tree)

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"- {named} (l.{number})" in result.stdout, result.stdout
