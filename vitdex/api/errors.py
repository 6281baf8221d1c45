"""The one place where errors become HTTP responses."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Litestar, MediaType, Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.handlers import HTTPRouteHandler

from vitdex.api.validation import takes_json_body
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
        if isinstance(exc, NotFoundException) and isinstance(exc.__cause__, ValueError):
            # The router matched the shape but could not parse a typed segment (``1.0``).
            body["detail"] = (
                f"no route matches {request.url.path}: ids in a path are plain decimal integers"
            )
        if isinstance(exc, ValidationException):
            status = 400
            body["status_code"] = status
            # Say what was wrong in the one field every client shows, not only in extra.
            said = _validation_messages(exc.extra)
            if said:
                body["detail"] = f"{body['detail']}: {said}"
        if exc.extra:
            body["extra"] = exc.extra
        headers = dict(exc.headers) if exc.headers else None
    else:
        status = 500
        body = {"status_code": status, "detail": "internal server error"}
        log.exception("unhandled error in %s %s", request.method, request.url.path)
    return Response(content=body, status_code=status, media_type=MediaType.JSON, headers=headers)


def _validation_messages(extra: Any) -> str:
    """The messages of a validation error's ``extra`` list, each with its key: "filter:
    Object contains unknown field `tags`"."""
    if not isinstance(extra, list):
        return ""
    parts = []
    for item in extra[:5]:
        if isinstance(item, dict) and item.get("message"):
            key = item.get("key")
            parts.append(f"{key}: {item['message']}" if key else str(item["message"]))
    return "; ".join(parts)


# --- the error answers, as the OpenAPI document states them ----------------------------------
# Never raised: each names, for Litestar's document generator, a status the API answers
# with and what it means. Every one has the body error_response writes.


def _declared(name: str, status: int, detail: str) -> type[HTTPException]:
    return type(name, (HTTPException,), {"status_code": status, "detail": detail})


Unauthorized = _declared(
    "Unauthorized", 401, "An API key is required: Authorization: Bearer KEY, or X-API-Key: KEY."
)
Forbidden = _declared("Forbidden", 403, "The folder is outside VITDEX_ALLOWED_ROOTS.")
NotFound = _declared("NotFound", 404, "No such item, or the file behind it is gone.")
Conflict = _declared(
    "Conflict", 409, "The request conflicts with the current state; detail says how."
)
PayloadTooLarge = _declared(
    "PayloadTooLarge", 413, "The upload is larger than VITDEX_MAX_UPLOAD_MB."
)
UnsupportedMediaType = _declared(
    "UnsupportedMediaType", 415, "The body is not of a media type this operation takes."
)
Unprocessable = _declared(
    "Unprocessable",
    422,
    "The file cannot be used: not a decodable photo, or not a valid checkpoint.",
)
Unavailable = _declared(
    "Unavailable", 503, "The model or a backend the operation needs is not available."
)


def document_errors(app: Litestar, *, auth: bool, prefix: str = "/api/v1") -> None:
    """Declare on every operation under ``prefix`` the error statuses it answers with.

    Each operation gets 400 (an invalid parameter or body), and 401 when ``auth`` (API
    keys are configured); one with a path parameter gets 404, one with a JSON body 415
    (see :func:`vitdex.api.validation.json_content_type`); a handler adds its own
    (409, 422...) with ``raises=[...]`` in its decorator. Runs before the document is
    first generated.
    """
    for route in app.routes:
        if not route.path.startswith(prefix):
            continue
        for handler in getattr(route, "route_handlers", ()):
            if not isinstance(handler, HTTPRouteHandler) or "OPTIONS" in handler.http_methods:
                continue
            generic: list[type[HTTPException]] = [ValidationException]
            if auth:
                generic.append(Unauthorized)
            if "{" in route.path:
                generic.append(NotFound)
            if takes_json_body(handler):
                generic.append(UnsupportedMediaType)
            own = list(handler.raises or ())
            statuses = {exc.status_code for exc in own}
            handler.raises = [
                *(exc for exc in generic if exc.status_code not in statuses),
                *own,
            ]
