"""Signing in with an API key, and out."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Controller, Request, get, post
from litestar.datastructures import Cookie
from litestar.params import FromQuery
from litestar.response import Redirect, Template

from vitdex import __version__
from vitdex.api.auth import web_session
from vitdex.api.deps import services_of
from vitdex.api.web import session
from vitdex.api.web.pages.common import SECURITY_HEADERS, local_path

#: A wrong key costs this long, so guessing keys over HTTP is slow.
_WRONG_KEY_DELAY_S = 0.5


def _login_page(next_path: str, error: str | None, status: int) -> Template:
    return Template(
        template_name="login.html",
        context={"next": next_path, "error": error, "version": __version__, "nav": []},
        status_code=status,
        headers=SECURITY_HEADERS,
    )


class LoginController(Controller):
    """``/login`` and ``/logout``."""

    include_in_schema = False

    @get("/login")
    async def login_form(
        self, request: Request[Any, Any, Any], next: FromQuery[str] = "/"
    ) -> Template | Redirect:
        """The sign-in form; straight on when signing in is not needed or already done."""
        keys = services_of(request.app.state).settings.api.api_keys
        if not keys or web_session(request) is not None:
            return Redirect(local_path(next), status_code=303)
        return _login_page(local_path(next), None, 200)

    @post("/login", status_code=303)
    async def login(self, request: Request[Any, Any, Any]) -> Template | Redirect:
        """Check the key; on success set the session cookie and go where the person was."""
        keys = services_of(request.app.state).settings.api.api_keys
        form = await request.form()
        next_path = local_path(str(form.get("next") or "/"))
        if not keys:
            return Redirect(next_path, status_code=303)
        given = str(form.get("key") or "").strip()
        if not session.valid_key(keys, given):
            await asyncio.sleep(_WRONG_KEY_DELAY_S)
            return _login_page(next_path, "That key is not valid.", 401)
        value, _ = session.issue(keys)
        cookie = Cookie(
            key=session.COOKIE,
            value=value,
            max_age=session.MAX_AGE_S,
            path="/",
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
        return Redirect(next_path, status_code=303, cookies=[cookie])

    @post("/logout", status_code=303)
    async def logout(self, request: Request[Any, Any, Any]) -> Redirect:
        """End the session (the form repeats the CSRF token, as every change must)."""
        signed_in = web_session(request)
        form = await request.form()
        if signed_in is not None and not session.valid_key(
            [signed_in.csrf], str(form.get("csrf") or "")
        ):
            return Redirect("/", status_code=303)
        cookie = Cookie(
            key=session.COOKIE, value="", max_age=0, path="/", httponly=True, samesite="lax"
        )
        return Redirect("/login", status_code=303, cookies=[cookie])
