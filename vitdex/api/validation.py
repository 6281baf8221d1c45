"""Input checks that hold for every route, whatever its handler declares.

- Integer path parameters must be written canonically (``0`` or ``[1-9][0-9]*``, an
  optional ``-``): Litestar parses ``{id:int}`` with ``int()``, which also reads ``01``,
  ``+1``, `` 1`` and ``１`` as 1, so ``DELETE /libraries/01`` deleted library 1.
- A JSON body may come without a ``Content-Type`` (scripts forget the header) or as
  ``application/x-www-form-urlencoded`` (what ``curl -d``, the README's example, sends):
  both are read as JSON. Any other type must be JSON (``application/json`` or
  ``*/*+json``), or the answer is 415. Every route holds to this:
  :func:`json_content_type` on those with a declared JSON body, and
  ``POST /api/v1/similar`` (which reads JSON or multipart itself) with
  :func:`reads_as_json`.
- JSON bodies are decoded by :class:`CheckedRequest`: a body nested too deeply for the
  decoder is a 400, not a ``RecursionError``; every integer in it must fit in int64 (the
  catalog's ids; a bigger one reached the driver as ``NumericValueOutOfRange``) and no
  string may hold a NUL character (no path, name or caption has one, the OS refuses it
  in paths and PostgreSQL in text).
"""

from __future__ import annotations

import re
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.enums import RequestEncodingType
from litestar.exceptions import ClientException, ValidationException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import BodyKwarg

from vitdex.db.models import INT64_MAX

#: How an integer is written in a path: no sign but ``-``, no leading zeros, no spaces.
_CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]*")
INT64_MIN = -INT64_MAX - 1


def canonical_path_ints(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """Guard: refuse (400) an integer path parameter that is not written canonically.

    The raw segment is found by lining the request path up with the route's template;
    the parsed value alone cannot tell ``01`` from ``1``.
    """
    params = connection.scope.get("path_params") or {}
    ints = {k for k, v in params.items() if isinstance(v, int) and not isinstance(v, bool)}
    if not ints:
        return
    template = [part for part in connection.scope.get("path_template", "").split("/") if part]
    given = [part for part in connection.scope["path"].split("/") if part]
    # Line up from the end: behind a proxy the path may carry a root_path prefix.
    if len(given) < len(template):  # cannot happen for a route that matched; refuse anyway
        raise ValidationException(f"cannot read the path {connection.scope['path']!r}")
    for pattern, raw in zip(template, given[len(given) - len(template) :], strict=True):
        name = pattern[1:-1] if pattern.startswith("{") and pattern.endswith("}") else None
        if name in ints and not _CANONICAL_INT.fullmatch(raw):
            raise ValidationException(
                f"{name} must be a plain decimal integer (digits only, no sign, spaces or "
                f"leading zeros), got {raw!r}",
                extra=[{"key": name, "source": "path", "message": "not a canonical integer"}],
            )


#: Read as JSON besides the JSON types: no type at all, and curl's default for ``-d``.
_UNTYPED = {"", RequestEncodingType.URL_ENCODED}


def reads_as_json(content_type: str) -> bool:
    """Whether a body with this ``Content-Type`` (parameters and case aside) is read as
    JSON: a JSON type, none, or curl's default (see the module docstring)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type in {*_UNTYPED, RequestEncodingType.JSON} or media_type.endswith("+json")


def takes_json_body(handler: BaseRouteHandler) -> bool:
    """Whether the handler declares a ``data`` body decoded as JSON (Litestar's default)."""
    data = handler.parsed_fn_signature.parameters.get("data")
    if data is None:
        return False
    kwarg = data.kwarg_definition
    return not isinstance(kwarg, BodyKwarg) or kwarg.media_type == RequestEncodingType.JSON


def json_content_type(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Guard: refuse (415) a body declared as something other than JSON on a JSON route.

    Litestar decodes a JSON ``data`` whatever the header says, while ``/similar`` refused
    a body without one: this makes every JSON route follow the module's one rule.
    """
    if not takes_json_body(handler):
        return
    content_type = connection.headers.get("content-type", "")
    if not reads_as_json(content_type):
        raise ClientException(
            f"send the body as JSON (Content-Type: application/json, or none), "
            f"not {content_type!r}",
            status_code=415,
        )


def check_json(value: Any) -> None:
    """Refuse (400) integers outside int64 and strings holding NUL in a decoded body.

    Walks iteratively: the decoder already bounds the depth, this must not recurse again.
    """
    stack: list[tuple[str, Any]] = [("$", value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, bool) or item is None or isinstance(item, float):
            continue
        if isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                raise ValidationException(
                    f"{where} is {item}: integers must lie between {INT64_MIN} and {INT64_MAX}"
                )
        elif isinstance(item, str):
            if "\x00" in item:
                raise ValidationException(f"{where} must not contain NUL characters")
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and "\x00" in key:
                    raise ValidationException(f"a key in {where} contains a NUL character")
                stack.append((f"{where}.{key}", child))
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", child) for i, child in enumerate(item))


class CheckedRequest(Request[Any, Any, Any]):
    """The app's request class: JSON bodies decode safely and pass :func:`check_json`."""

    async def json(self) -> Any:
        """The decoded JSON body; 400 when nested too deeply, out of int64 or holding NUL."""
        try:
            value = await super().json()
        except RecursionError:
            # msgspec recurses once per level and stops at the interpreter's limit (~1000).
            raise ValidationException("the JSON body is nested too deeply") from None
        check_json(value)
        return value

    async def msgpack(self) -> Any:
        """The decoded MessagePack body, held to the same rules as JSON."""
        try:
            value = await super().msgpack()
        except RecursionError:
            raise ValidationException("the MessagePack body is nested too deeply") from None
        check_json(value)
        return value
