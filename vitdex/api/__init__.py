"""The HTTP API (Litestar): ``create_app`` builds it, ``vitdex serve`` runs it."""

from vitdex.api.app import create_app

__all__ = ["create_app"]
