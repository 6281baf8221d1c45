"""The /duplicates page: a shell whose script reads the JSON API."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get
from litestar.response import Redirect, Template

from vitdex.api.web.pages.common import page
from vitdex.search.duplicates import DEFAULT_THRESHOLD


class DuplicatesPage(Controller):
    """Review duplicate groups, one at a time, by keyboard or mouse."""

    include_in_schema = False

    @get("/duplicates", sync_to_thread=False)
    def duplicates(self, request: Request[Any, Any, Any]) -> Template | Redirect:
        """Scan for duplicates, then review the groups one at a time, by keyboard or mouse.

        ``threshold`` is the near-copy similarity a scan uses when none is given, shown in
        the form so people see what they change.
        """
        return page(request, "duplicates.html", active="/duplicates", threshold=DEFAULT_THRESHOLD)
