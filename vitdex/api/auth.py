"""API keys: every ``/api/v1`` request carries one when ``VITDEX_API_KEYS`` is set.

A request may instead carry the web pages' session cookie (see
:mod:`vitdex.api.web.session`); one that changes something must then repeat the
session's CSRF token in ``X-CSRF-Token``.
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from vitdex.api.deps import services_of
from vitdex.api.web import session


def presented_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The key of a request: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    header = connection.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    key = connection.headers.get("x-api-key", "").strip()
    return key or None


def web_session(connection: ASGIConnection[Any, Any, Any, Any]) -> session.Session | None:
    """The valid web session of a request, if it carries one."""
    keys = services_of(connection.app.state).settings.api.api_keys
    return session.read(keys, connection.cookies.get(session.COOKIE))


def require_api_key(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard: refuse (401) a request without a valid key or web session; no keys
    configured means open. A session-borne request that changes something without the
    session's CSRF token is refused (403)."""
    keys = services_of(connection.app.state).settings.api.api_keys
    if not keys:
        return
    if session.valid_key(keys, presented_key(connection)):
        return
    signed_in = web_session(connection)
    if signed_in is not None:
        if connection.scope.get("method", "GET") in session.SAFE_METHODS:
            return
        token = connection.headers.get(session.CSRF_HEADER, "")
        if token and session.valid_key([signed_in.csrf], token):
            return
        raise PermissionDeniedException(
            "this request changes something: send the page's CSRF token in X-CSRF-Token"
        )
    raise NotAuthorizedException(
        "a valid API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
        headers={"WWW-Authenticate": "Bearer"},
    )
