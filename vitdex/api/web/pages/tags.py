"""The /tags page: a shell whose script reads the JSON API."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get
from litestar.response import Redirect, Template

from vitdex.api.web.pages.common import page


class TagsPage(Controller):
    """Every tag with its photo count; rename, delete, open as a filtered library."""

    include_in_schema = False

    @get("/tags", sync_to_thread=False)
    def tags_page(self, request: Request[Any, Any, Any]) -> Template | Redirect:
        """Every tag with its photo count; rename, delete, open as a filtered library."""
        return page(request, "tags.html", active="/tags")
