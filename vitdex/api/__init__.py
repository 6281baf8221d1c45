"""The HTTP API (Litestar): ``create_app`` builds it, ``vitdex serve`` runs it.

``create_app`` is imported on first use, so importing :mod:`vitdex.api.serve` (the HTTP
protocol uvicorn loads by name) does not pay for Litestar.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from vitdex.api.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
