"""Helpers the test suites share: running the ``vitdex`` command, waiting for API jobs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from vitdex.indexer.pipeline import IndexReport


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


def index_folder(folder: Path) -> IndexReport:
    """Index ``folder`` with the model and catalog the VITDEX_* environment names; what
    the run did."""
    from vitdex.config import load_settings
    from vitdex.db import ensure_schema, make_engine, session_factory
    from vitdex.indexer.embedder import Embedder
    from vitdex.indexer.pipeline import Indexer

    settings = load_settings()
    engine = make_engine(settings.storage.resolved_database_url)
    try:
        ensure_schema(engine)
        embedder = Embedder.from_settings(settings.model)
        return Indexer(settings, session_factory(engine), embedder).run([folder])
    finally:
        engine.dispose()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def served(
    env: dict[str, str],
    *,
    flags: Sequence[str] = (),
    serve_args: Sequence[str] = (),
    start_timeout: float = 60,
    log: Path | None = None,
) -> Iterator[str]:
    """``vitdex FLAGS serve SERVE_ARGS`` in a process of its own with ``env`` on top of
    this one's, on a free port; yields its base URL once ``/health`` answers, and stops
    it afterwards. With ``log`` its output goes to that file (a long-running server's
    access log would fill a pipe nobody reads)."""
    import httpx

    port = free_port()
    out: Any = log.open("wb") if log is not None else subprocess.PIPE
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "vitdex", *flags, "serve", *serve_args),
            *("--host", "127.0.0.1", "--port", str(port)),
        ],
        env={**os.environ, **env},
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                said = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                if log is not None:
                    said = log.read_text(errors="replace")
                raise AssertionError(f"the server exited with {proc.returncode}:\n{said[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("the server did not answer /health in time")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if log is not None:
            out.close()


class OwnRedis:
    """A ``redis-server`` without persistence on a free port, started and killed by the
    test, never the shared one: killed and started again, it is a Redis that lost
    everything."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it empty and wait until it answers."""
        from redis import Redis

        if shutil.which("redis-server") is None:
            raise AssertionError("these tests start a Redis of their own: install redis-server")
        self.proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.workdir)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        conn = Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        while True:
            try:
                conn.ping()
                break
            except Exception:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        conn.close()

    def kill(self) -> None:
        """SIGKILL it: everything it held is gone (no persistence)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=20)
        self.proc = None
