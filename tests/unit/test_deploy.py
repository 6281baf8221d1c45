"""docker-compose.yml and the Dockerfile agree with the code (no Docker engine needed).

There is no Docker engine on the machines these tests run on, so what can be checked
without one is checked: the compose file parses, its services, health checks, volumes and
dependencies are complete, every VITDEX_* variable it sets is a real setting that
validates, and the commands it runs exist.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from vitdex.cli import cli
from vitdex.config import (
    ApiSettings,
    IndexSettings,
    ModelSettings,
    StorageSettings,
    VectorSettings,
    load_settings,
)

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = (StorageSettings, ModelSettings, IndexSettings, VectorSettings, ApiSettings)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def _env_names() -> set[str]:
    return {f"VITDEX_{name.upper()}" for cls in SETTINGS for name in cls.model_fields}


def test_services_and_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"api", "worker", "postgres", "redis", "qdrant"}
    for name in ("api", "postgres", "redis", "qdrant"):
        check = services[name]["healthcheck"]
        assert check["test"] and check["interval"], name
    for name, service in services.items():
        for dep, cond in service.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert cond["condition"] == "service_healthy"
            assert "healthcheck" in services[dep], f"{name} waits for {dep}, which has none"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], f"undeclared volume {source}"


def test_vitdex_environment_is_real_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    known = _env_names()
    for name in ("api", "worker"):
        env = compose["services"][name]["environment"]
        unknown = {key for key in env if key.startswith("VITDEX_")} - known
        assert not unknown, f"{name} sets variables vitdex does not read: {unknown}"
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        settings = load_settings()
        assert settings.storage.resolved_database_url.startswith("postgresql://")
        assert settings.vectors.vector_backend == "qdrant"
        assert settings.vectors.qdrant_url == "http://qdrant:6333"
        assert settings.api.redis_url == "redis://redis:6379/0"
        assert [str(p) for p in settings.api.allowed_roots] == ["/photos"]
        # the services they point at exist
        assert "postgres:5432" in env["VITDEX_DATABASE_URL"]
        assert {"postgres", "redis", "qdrant"} <= set(compose["services"])


def test_commands_exist(compose: dict[str, Any]) -> None:
    for name in ("api", "worker"):
        command = compose["services"][name]["command"]
        assert command[0] == "vitdex"
        assert command[1] in cli.commands, f"`vitdex {command[1]}` does not exist"
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = re.search(r"^CMD \[(.*)\]$", dockerfile, re.MULTILINE)
    assert cmd is not None
    words = shlex.split(cmd.group(1).replace(",", " "))
    assert words[:2] == ["vitdex", "serve"]
    for line in re.findall(r"^COPY (.+)$", dockerfile, re.MULTILINE):
        *sources, _dest = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
