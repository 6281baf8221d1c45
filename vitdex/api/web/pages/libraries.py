"""The libraries page: the folders vitdex indexes; add one, rescan, forget."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get
from litestar.response import Redirect, Template

from vitdex.api.deps import services_of
from vitdex.api.web.pages.common import page


class LibrariesPage(Controller):
    """``/libraries``."""

    include_in_schema = False

    @get("/libraries", sync_to_thread=False)
    def libraries(self, request: Request[Any, Any, Any]) -> Template | Redirect:
        """Every library with its counts (filled by the page script from the API)."""
        roots = services_of(request.app.state).settings.api.allowed_roots
        return page(
            request,
            "libraries.html",
            active="/libraries",
            allowed_roots=[str(r) for r in roots],
        )
