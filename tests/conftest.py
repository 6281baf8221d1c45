"""Shared fixtures: a tiny ViT checkpoint built once, an isolated VITDEX_HOME, both databases."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

POSTGRES_URL = os.environ.get("VITDEX_TEST_POSTGRES_URL", "")

# The suite runs on torch (the reference runtime); subprocesses inherit it. Tests of the
# other runtimes set VITDEX_RUNTIME themselves.
os.environ.setdefault("VITDEX_RUNTIME", "torch")
_RUNTIME = os.environ["VITDEX_RUNTIME"]
# Training processes run MKL in its strict reproducible mode (vitdex.training.determinism);
# tests that train in this process and compare with a child's run must do the same, and
# MKL reads the setting once, before its first call.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never reach a model hub; they build their checkpoints themselves."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in list(os.environ):
        if name.startswith("VITDEX_") and not name.startswith("VITDEX_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("VITDEX_RUNTIME", _RUNTIME)


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ViT classification checkpoint (4 layers, 10 named labels) saved to disk."""
    from vitdex.testing.vit import build_tiny_vit

    return build_tiny_vit(tmp_path_factory.mktemp("models") / "tiny-vit")


@pytest.fixture(scope="session")
def tiny_vit_headless(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ViT feature-extraction checkpoint (no classifier)."""
    from vitdex.testing.vit import build_tiny_vit

    return build_tiny_vit(tmp_path_factory.mktemp("models") / "tiny-vit-headless", classifier=False)


@pytest.fixture(scope="session")
def tiny_sd_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Builds (once per version) a tiny random Stable Diffusion pipeline saved as a folder.

    Versions: ``sd15``, ``sd21-base``, ``sd21`` (v-prediction), ``sdxl``. Callers must
    not modify the folder; copy it first.
    """
    from vitdex.testing.sd import build_random_sd

    built: dict[str, Path] = {}

    def build(version: str = "sd15") -> Path:
        if version not in built:
            folder = tmp_path_factory.mktemp("sd") / f"tiny-{version}"
            built[version] = build_random_sd(folder, version=version)
        return built[version]

    return build


@pytest.fixture(scope="session")
def tiny_sd(tiny_sd_factory: Callable[[str], Path]) -> Path:
    """A tiny random SD 1.5-shaped pipeline (diffusers folder)."""
    return tiny_sd_factory("sd15")


def _postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    if not POSTGRES_URL:
        pytest.skip("VITDEX_TEST_POSTGRES_URL is not set (PostgreSQL tests need a server)")
    admin_url = make_url(POSTGRES_URL).set(drivername="postgresql+psycopg")
    name = f"vitdex_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # the server is down or refuses us: say so, loudly
        admin.dispose()
        pytest.fail(f"cannot create a PostgreSQL test database at {POSTGRES_URL}: {exc}")
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test that takes this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def vitdex_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_vit: Path, database_url: str
) -> dict[str, str]:
    """VITDEX_* variables for a run against the tiny model in a fresh home and database."""
    env = {
        "VITDEX_HOME": str(tmp_path / "home"),
        "VITDEX_DATABASE_URL": database_url,
        "VITDEX_MODEL": str(tiny_vit),
        "VITDEX_SPACES": "cls,cls@2",
        "VITDEX_PRECISION": "fp32",
        "VITDEX_BATCH_SIZE": "4",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def rq_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str]]:
    """The real Redis at VITDEX_TEST_REDIS_URL with a queue of this test's own.

    Sets VITDEX_REDIS_URL and VITDEX_QUEUE_NAME; yields ``(connection, queue name)``.
    rq job ids are fixed per catalog and job row (``vitdex-<catalog>-job-<id>``); leftover
    job keys are removed before and after all the same.
    """
    from redis import Redis

    url = os.environ.get("VITDEX_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    conn = Redis.from_url(url)
    try:
        conn.ping()
    except Exception as exc:
        pytest.fail(f"Redis is not reachable at {url}: {exc}")
    queue_name = f"vitdex-test-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("VITDEX_REDIS_URL", url)
    monkeypatch.setenv("VITDEX_QUEUE_NAME", queue_name)

    def clean() -> None:
        keys = [
            *conn.scan_iter(match=f"rq:*{queue_name}*"),
            *conn.scan_iter(match="rq:job:vitdex-*-job-*"),
            *conn.scan_iter(match="rq:results:vitdex-*-job-*"),
        ]
        if keys:
            conn.delete(*keys)

    clean()
    try:
        yield conn, queue_name
    finally:
        clean()
        conn.close()
