"""Duplicate scans: the function a queue runs for a job row of kind ``duplicates``."""

from __future__ import annotations

from vitdex.config import Settings
from vitdex.errors import ConfigError


def run_duplicates_job(settings: Settings, job_id: int) -> None:  # noqa: ARG001
    """Run the duplicates scan ``job_id``."""
    raise ConfigError("duplicate scans are not built yet")
