"""Input checks that hold for every route, whatever its handler declares.

- Integer path parameters must be written canonically (``0`` or ``[1-9][0-9]*``, an
  optional ``-``): Litestar parses ``{id:int}`` with ``int()``, which also reads ``01``,
  ``+1``, `` 1`` and ``１`` as 1, so ``DELETE /libraries/01`` deleted library 1.
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
from litestar.exceptions import ValidationException
from litestar.handlers.base import BaseRouteHandler

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
