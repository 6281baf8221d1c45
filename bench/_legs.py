"""What the benchmarks that run each leg in a child process share: the child prints one
``BENCH-RESULT {json}`` line, the parent runs it, times it and reads that line back."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

_MARK = "BENCH-RESULT "


def emit(data: dict[str, Any]) -> None:
    """In a child: print the leg's result for the parent."""
    print(_MARK + json.dumps(data), flush=True)


def run(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[float, str]:
    """Run a leg's process; its wall-clock seconds and its standard output."""
    started = time.perf_counter()
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-3000:]
        raise RuntimeError(f"{' '.join(cmd[:4])}... exited {proc.returncode}:\n{tail}")
    return wall, proc.stdout


def child_result(stdout: str) -> dict[str, Any]:
    """The result a child leg emitted (its last ``BENCH-RESULT`` line)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(_MARK):
            result: dict[str, Any] = json.loads(line.removeprefix(_MARK))
            return result
    raise RuntimeError(f"no result in the leg's output:\n{stdout[-2000:]}")


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing (or ``b`` is 0)."""
    return a / b if a is not None and b else None


def fmt(value: float | None, spec: str = ".2f") -> str:
    """``value`` formatted, or "-" when missing."""
    return "-" if value is None else format(value, spec)
