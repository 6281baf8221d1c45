"""Helpers the test suites share: running the ``vitdex`` command, waiting for API jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol


def run_vitdex(
    *args: str,
    env: dict[str, str] | None = None,
    code: int | None = 0,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """``python -m vitdex ARGS`` in a fresh process with ``env`` on top of this one's.

    Fails the test unless it exits with ``code`` (``None``: any exit is the caller's to
    check).
    """
    proc = subprocess.run(
        [sys.executable, "-m", "vitdex", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if code is not None and proc.returncode != code:
        raise AssertionError(f"vitdex {args} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def as_json(proc: subprocess.CompletedProcess[str]) -> Any:
    """The command's stdout, parsed."""
    return json.loads(proc.stdout)


class _Response(Protocol):
    def json(self) -> Any: ...


class _Client(Protocol):
    def get(self, url: str) -> _Response: ...


def wait_for_job(client: _Client, job_id: int, timeout: float = 120) -> dict[str, Any]:
    """Poll ``/api/v1/jobs/{id}`` until the job has finished; its final JSON."""
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def index_folder(folder: Path) -> None:
    """Index ``folder`` with the model and catalog the VITDEX_* environment names."""
    from vitdex.config import load_settings
    from vitdex.db import ensure_schema, make_engine, session_factory
    from vitdex.indexer.embedder import Embedder
    from vitdex.indexer.pipeline import Indexer

    settings = load_settings()
    engine = make_engine(settings.storage.resolved_database_url)
    try:
        ensure_schema(engine)
        embedder = Embedder.from_settings(settings.model)
        Indexer(settings, session_factory(engine), embedder).run([folder])
    finally:
        engine.dispose()
