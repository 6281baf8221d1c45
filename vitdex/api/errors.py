"""The one place where errors become HTTP responses."""

from __future__ import annotations

import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException

from vitdex.errors import VitdexError

log = logging.getLogger("vitdex.api")


def error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """Map any exception to a JSON ``{"status_code", "detail"}`` response.

    vitdex errors answer with their own ``http_status`` and message; Litestar's HTTP
    exceptions keep their status (parameter validation becomes 400 with the failing
    fields under ``extra``); anything else is a 500 that is logged with its traceback and
    tells the client nothing about the internals.
    """
    headers: dict[str, str] | None = None
    body: dict[str, Any]
    if isinstance(exc, VitdexError):
        status = exc.http_status
        body = {"status_code": status, "detail": exc.message}
        if status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, exc.message)
    elif isinstance(exc, HTTPException):
        status = exc.status_code
        body = {"status_code": status, "detail": exc.detail or "request failed"}
        if isinstance(exc, ValidationException):
            status = 400
            body["status_code"] = status
        if exc.extra:
            body["extra"] = exc.extra
        headers = dict(exc.headers) if exc.headers else None
    else:
        status = 500
        body = {"status_code": status, "detail": "internal server error"}
        log.exception("unhandled error in %s %s", request.method, request.url.path)
    return Response(content=body, status_code=status, media_type=MediaType.JSON, headers=headers)
