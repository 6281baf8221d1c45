"""Bodies of the liveness and readiness probes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class HealthOut:
    """The process answers."""

    status: str


@dataclass
class ReadyOut:
    """Each dependency's state (``ok`` or the reason it failed)."""

    ready: bool
    checks: dict[str, str]
