"""Library grid (/), photo (/photos/{id}) and search (/search) pages.

The pages are shells: their scripts read the JSON API (images, facets, similar), so the
page handlers only check sign-in and, for a photo, that the id exists (a friendly 404).
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.params import PathParameter
from litestar.response import Redirect, Template

from vitdex.api.deps import services_of
from vitdex.api.web.pages.common import page
from vitdex.errors import NotFoundError
from vitdex.search import catalog

#: Largest id a path may name (int64, as the catalog stores ids).
INT64_MAX = 2**63 - 1


class BrowsePages(Controller):
    """Library grid (/), photo (/photos/{id}) and search (/search) pages."""

    include_in_schema = False

    @get("/", sync_to_thread=False)
    def library(self, request: Request[Any, Any, Any]) -> Template | Redirect:
        """The catalog as a grid of thumbnails, with facet filters in a sidebar."""
        return page(request, "library.html", active="/")

    @get("/photos/{image_id:int}", sync_to_thread=True)
    def photo(
        self,
        request: Request[Any, Any, Any],
        # No range check here: any number out of range gets the same friendly 404 page.
        image_id: Annotated[int, PathParameter()],
    ) -> Template | Redirect:
        """One photo large, its facts, labels and neighbours; 404 page for an unknown id."""
        found = True
        if 1 <= image_id <= INT64_MAX:
            try:
                catalog.get_image(services_of(request.app.state).sessions, image_id)
            except NotFoundError:
                found = False
        else:
            found = False
        answer = page(request, "photo.html", active="/", image_id=image_id, found=found)
        if isinstance(answer, Template) and not found:
            answer.status_code = 404
        return answer

    @get("/search", sync_to_thread=False)
    def search(self, request: Request[Any, Any, Any]) -> Template | Redirect:
        """Similar search by a dropped, pasted or picked file, or by a catalog id."""
        return page(request, "search.html", active="/search")
