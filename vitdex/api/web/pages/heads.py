"""The /heads pages: shells whose scripts read the JSON API (``/api/v1/heads``)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.params import PathParameter
from litestar.response import Redirect, Template

from vitdex.api.deps import services_of
from vitdex.api.web.pages.common import page
from vitdex.errors import NotFoundError
from vitdex.search import heads


class HeadsPages(Controller):
    """Every head; one head's report and its uncertain photos for correction."""

    include_in_schema = False

    @get("/heads", sync_to_thread=False)
    def heads_page(self, request: Request[Any, Any, Any]) -> Template | Redirect:
        """Every head with its accuracy and dates, and a form to train a new one."""
        return page(request, "heads.html", active="/heads")

    @get("/heads/{name:str}", sync_to_thread=True)
    def head_page(
        self, request: Request[Any, Any, Any], name: Annotated[str, PathParameter()]
    ) -> Template | Redirect:
        """One head's report, its labels and its least certain photos to correct; a 404
        page (with the way back) for a name no head has."""
        try:
            heads.get_head(services_of(request.app.state).sessions, name)
            found = True
        except NotFoundError:
            found = False
        answer = page(request, "head.html", active="/heads", name=name, found=found)
        if isinstance(answer, Template) and not found:
            answer.status_code = 404
        return answer
