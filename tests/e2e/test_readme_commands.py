"""Every fenced ``vitdex`` command of the README, run as written against the demo catalog.

A README whose examples do not run is the first thing a new user meets. This test reads
the fenced shell blocks, runs each ``vitdex`` line with ``bash`` (so ``~``, ``$HOME`` and
quoting behave as in the user's shell) in a working folder holding photos named like the
examples, against the catalog ``vitdex demo`` built, with ``vitdex`` on ``PATH``. The
``curl`` lines of the HTTP block run against the ``vitdex serve`` line before them. The
commands that need the model hub (``model fetch``, training from a hub id) must stop
offline with exit code 3 and say why; every other one must exit 0.

What is changed from the text: only the port of ``vitdex serve`` (a free one instead of
8000, which another process may hold) and the model (the tiny test ViT, by
``VITDEX_MODEL``, as the demo's hint sets it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import free_port

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
VENV_BIN = Path(sys.executable).parent
#: Commands that reach the model hub: offline they must stop with exit code 3.
NEEDS_HUB = (re.compile(r"\bvitdex model fetch\b"), re.compile(r"--base [\w.-]+/[\w.-]+"))
#: The example photos the README names, taken from the demo's shipped samples.
EXAMPLE_FILES = ("holiday.jpg", "beach.jpg", "cat.jpg", "dog1.jpg", "dog2.jpg")


@dataclass
class Command:
    """One command line of a fenced block (continuations joined, comment dropped)."""

    line: int
    text: str
    block: int

    @property
    def program(self) -> str:
        """The command's program, after any ``NAME=value`` assignments."""
        words = self.text.split()
        rest = [w for w in words if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", w)]
        return rest[0] if rest else ""


def _drop_comment(text: str) -> str:
    """``text`` without a trailing ``# comment`` (a ``#`` outside quotes after a space)."""
    quote = ""
    for i, char in enumerate(text):
        if quote:
            if char == quote:
                quote = ""
            elif char == "\\" and quote == '"':
                continue
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip()
    return text.rstrip()


def readme_commands() -> list[Command]:
    """The command lines of every ``sh`` block of the README, in order."""
    commands: list[Command] = []
    block = 0
    inside = False
    pending = ""
    start = 0
    for number, raw in enumerate(README.read_text().splitlines(), start=1):
        if raw.startswith("```"):
            inside = raw.strip() == "```sh"
            block += inside
            continue
        if not inside:
            continue
        text = _drop_comment(raw) if not pending else _drop_comment(raw).lstrip()
        if not pending:
            start = number
        if text.endswith("\\"):
            pending += text[:-1].rstrip() + " "
            continue
        text = pending + text
        pending = ""
        if text:
            commands.append(Command(start, text, block))
    return commands


def _wait_healthy(port: int, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"vitdex serve exited {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("vitdex serve did not answer /health in time")


def _http_error(output: str) -> str | None:
    """The error of a JSON answer (Litestar's ``status_code`` ≥ 400), else None."""
    try:
        body = json.loads(output)
    except ValueError:
        return f"not JSON: {output[:300]!r}"
    if isinstance(body, dict) and int(body.get("status_code", 200)) >= 400:
        return f"HTTP {body['status_code']}: {body.get('detail')}"
    return None


def test_readme_commands_are_found() -> None:
    """The parser sees the blocks it is meant to run (so the test below cannot pass by
    running nothing)."""
    commands = readme_commands()
    vitdex = [c for c in commands if c.program == "vitdex"]
    assert len(vitdex) >= 15, [c.text for c in vitdex]
    joined = next(c for c in vitdex if "dataset create" in c.text)
    assert "--class-count 200" in joined.text and "\\" not in joined.text
    assert all("#" not in c.text for c in vitdex)
    assert any(c.program == "curl" for c in commands)


def test_every_readme_command_runs_against_the_demo_catalog(
    vitdex_env: dict[str, str], tmp_path: Path
) -> None:
    if not (VENV_BIN / "vitdex").is_file():
        pytest.skip("no vitdex console script beside this interpreter")
    home = tmp_path / "home"  # the user's $HOME, holding ~/Pictures
    work = tmp_path / "work"  # where the user types the commands
    work.mkdir()
    pictures = home / "Pictures"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VITDEX_")},
        "HOME": str(home),
        "PATH": os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")]),
        "VITDEX_MODEL": vitdex_env["VITDEX_MODEL"],
        "HF_HUB_OFFLINE": "1",
        "NO_COLOR": "1",
    }

    def sh(text: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", text], cwd=work, env=env, capture_output=True, text=True, timeout=600
        )

    demo = sh("vitdex demo --photos 4")
    assert demo.returncode == 0, demo.stderr
    env["VITDEX_HOME"] = str(work / "demo-home")
    photos = work / "demo-home" / "photos"
    shipped = sorted((photos / "shipped").glob("*-original.jpg"))
    generated = sorted((photos / "generated").glob("*.jpg"))
    assert len(shipped) >= len(EXAMPLE_FILES) and generated
    for name, source in zip(EXAMPLE_FILES, shipped, strict=False):
        shutil.copy(source, work / name)
    (pictures / "2024").mkdir(parents=True)
    for i, source in enumerate(generated):
        shutil.copy(source, pictures / ("2024" if i % 2 else ".") / f"pic{i}.jpg")

    failures: list[str] = []
    ran = 0
    server: subprocess.Popen[str] | None = None
    server_block = -1
    port = free_port()
    try:
        for command in readme_commands():
            if command.program not in ("vitdex", "curl"):
                continue  # make, pip: the setup the test already stands on
            text = command.text.replace("--port 8000", f"--port {port}")
            text = text.replace("localhost:8000", f"localhost:{port}")
            where = f"README line {command.line}: {command.text}"
            if command.program == "curl":
                if server is None or server_block != command.block:
                    failures.append(f"{where}\n  no `vitdex serve` before it in its block")
                    continue
                done = sh(text)
                print(f"$ {text}\n{done.stdout[-1500:]}")
                error = _http_error(done.stdout) if done.returncode == 0 else done.stderr
                if error:
                    failures.append(f"{where}\n  {error}")
                ran += 1
                continue
            if " serve" in text:
                server = subprocess.Popen(
                    ["bash", "-c", text],
                    cwd=work,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    text=True,
                    start_new_session=True,  # so the whole group is stopped after
                )
                server_block = command.block
                _wait_healthy(port, server)
                ran += 1
                continue
            done = sh(text)
            ran += 1
            # Shown when the test fails (pytest keeps captured output of failures).
            print(f"$ {text}\n[exit {done.returncode}]\n{done.stdout[-1500:]}{done.stderr[-1500:]}")
            if any(p.search(text) for p in NEEDS_HUB):
                said = done.stderr.lower()
                if done.returncode != 3 or not ("offline" in said or "hub" in said):
                    failures.append(
                        f"{where}\n  offline: expected exit 3 naming the hub, got "
                        f"{done.returncode}: {done.stderr[-500:]}"
                    )
            elif done.returncode != 0 or not done.stdout.strip():
                failures.append(
                    f"{where}\n  exit {done.returncode}: {(done.stderr or done.stdout)[-800:]}"
                )
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    assert not failures, "\n".join(failures)
    assert ran >= 18
