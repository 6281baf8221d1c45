"""What the `vitdex` command prints, run as a user runs it with stdout not a terminal (piped
to a file or another program): per-file errors in a batch, plain lines, nothing cut."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import as_json, run_vitdex
from tests.photos import make_photo

pytestmark = pytest.mark.slow


def vitdex(
    *args: str, env: dict[str, str], code: int | None = 0
) -> subprocess.CompletedProcess[str]:
    return run_vitdex(*args, env=env, code=code)


def test_classify_reports_each_bad_file_and_keeps_the_good(
    vitdex_env: dict[str, str], tmp_path: Path
) -> None:
    env = vitdex_env
    chelsea = make_photo(tmp_path / "chelsea.png", seed=1)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo\n")
    ghost = tmp_path / "ghost.jpg"

    mixed = vitdex("classify", str(chelsea), str(notes), str(ghost), "-k", "2", env=env)
    assert str(chelsea) in mixed.stdout
    assert len([ln for ln in mixed.stdout.splitlines() if ln.startswith("  ")]) == 2
    errors = mixed.stderr.splitlines()
    assert len(errors) == 2
    assert errors[0].startswith(f"error: {notes}: ")
    assert errors[1].startswith(f"error: {ghost}: ") and "no such file" in errors[1]
    assert "Traceback" not in mixed.stderr

    as_machine = as_json(vitdex("classify", str(notes), str(chelsea), "--json", env=env))
    assert [r["query"] for r in as_machine] == [str(notes), str(chelsea)]
    assert as_machine[0]["labels"] == [] and as_machine[0]["error"]
    assert "error" not in as_machine[1] and len(as_machine[1]["labels"]) == 5

    # Nothing classified: every file named, and the error's exit code.
    none = vitdex("classify", str(notes), str(ghost), env=env, code=2)
    assert none.stdout == ""
    assert str(notes) in none.stderr and str(ghost) in none.stderr
    none_json = vitdex("classify", str(notes), "--json", env=env, code=2)
    assert as_json(none_json)[0]["error"] and str(notes) in none_json.stderr


def test_off_a_terminal_lines_are_plain_and_whole(
    vitdex_env: dict[str, str], tiny_vit: Path, tmp_path: Path
) -> None:
    """Paths well past 80 columns come out whole, one per line, with no progress frame."""
    deep = tmp_path / ("a-folder-name-long-enough-to-push-every-path-past-eighty-columns" * 2)
    model = deep / "the-tiny-vit-checkpoint-under-a-long-name"
    shutil.copytree(tiny_vit, model)  # a copy: a link would be resolved to its short target
    env = {**vitdex_env, "VITDEX_MODEL": str(model)}
    lib = deep / "Pictures"
    photos = [make_photo(lib / f"holiday-photo-{i}.jpg", size=(96, 72), seed=i) for i in range(3)]

    indexed = vitdex("index", str(lib), env=env)
    assert indexed.stdout.startswith("scanned 3, embedded 3")
    assert "img/s" not in indexed.stdout and "indexing" not in indexed.stdout
    for stream in (indexed.stdout, indexed.stderr):
        assert not any(ch in stream for ch in "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏━")
    # Progress still shows, as plain lines on stderr that a log keeps readable.
    assert "indexing 3/3" in indexed.stderr.splitlines()

    similar = vitdex("similar", str(photos[0]), "-k", "2", env=env).stdout.splitlines()
    assert similar[0] == f"{photos[0]}  (space cls)"
    assert similar[1] == "#\tscore\tid\tpath\tlabel"
    hits = [line.split("\t") for line in similar[2:]]
    assert [h[0] for h in hits] == ["1", "2"]
    assert {h[3] for h in hits} <= {str(p) for p in photos[1:]}

    status = vitdex("status", env=env).stdout
    assert f"model {model}\n" in status
    (row,) = [ln for ln in status.splitlines() if ln.startswith("cls\t")]
    assert row.split("\t")[-1].startswith(f"{model} @ ")
    assert "…" not in status and "…" not in "\n".join(similar)

    classified = vitdex("classify", str(photos[1]), env=env).stdout.splitlines()
    assert classified[0] == str(photos[1]) and len(classified) == 6
