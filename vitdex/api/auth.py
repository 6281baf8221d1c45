"""API keys: every ``/api/v1`` request carries one when ``VITDEX_API_KEYS`` is set."""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler

from vitdex.api.deps import services_of


def presented_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The key of a request: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    header = connection.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    key = connection.headers.get("x-api-key", "").strip()
    return key or None


def require_api_key(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard: refuse (401) a request without a valid key; no keys configured means open."""
    keys = services_of(connection.app.state).settings.api.api_keys
    if not keys:
        return
    given = presented_key(connection)
    # compare_digest against every key: the time taken says nothing about which is close.
    if given is not None and any(hmac.compare_digest(given.encode(), key.encode()) for key in keys):
        return
    raise NotAuthorizedException(
        "a valid API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
        headers={"WWW-Authenticate": "Bearer"},
    )
