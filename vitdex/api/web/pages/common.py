"""What every page shares: the sign-in check, the template context, safe redirects."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from litestar import Request
from litestar.response import Redirect, Template

from vitdex import __version__
from vitdex.api.auth import web_session
from vitdex.api.deps import services_of

#: The navigation bar: (path, title), in order.
NAV = [
    ("/", "Library"),
    ("/search", "Search"),
    ("/map", "Map"),
    ("/clusters", "Clusters"),
    ("/duplicates", "Duplicates"),
    ("/tags", "Tags"),
    ("/heads", "Heads"),
    ("/datasets", "Datasets"),
    ("/jobs", "Jobs"),
    ("/libraries", "Libraries"),
]


#: Sent with every page: scripts only from this site (the pages have no inline script),
#: photos from this site or a dropped file's blob, no framing by other sites.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def local_path(target: str | None, default: str = "/") -> str:
    """``target`` when it is a path on this site, else ``default``: a ``next=`` parameter
    must not send a person signing in to another site (``//evil``, ``https://...``)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def page(
    request: Request[Any, Any, Any], template: str, *, active: str, **context: Any
) -> Template | Redirect:
    """Render ``template`` for a signed-in person, or send them to sign in first.

    ``active`` is the navigation entry to highlight. The context always has ``csrf``
    (the token scripts send back on changes; empty when no keys are configured),
    ``auth`` (whether keys are configured), ``nav``, ``active`` and ``version``.
    """
    keys = services_of(request.app.state).settings.api.api_keys
    signed_in = web_session(request) if keys else None
    if keys and signed_in is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return Redirect(f"/login?next={quote(target, safe='')}", status_code=303)
    return Template(
        template_name=template,
        context={
            "csrf": signed_in.csrf if signed_in else "",
            "auth": bool(keys),
            "nav": NAV,
            "active": active,
            "version": __version__,
            **context,
        },
        headers=SECURITY_HEADERS,
    )
