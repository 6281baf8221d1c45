"""Map (/map) and clusters (/clusters, /clusters/{id}) pages.

The pages are shells: their scripts fetch maps, jobs and clustering runs from the JSON
API (``/api/v1/maps``, ``/api/v1/clusters``) and draw them.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.params import PathParameter
from litestar.response import Redirect, Template

from vitdex.api.web.pages.common import page
from vitdex.db.models import INT64_MAX


class ExplorePages(Controller):
    """Map (/map) and clusters (/clusters, /clusters/{id}) pages."""

    include_in_schema = False

    @get("/map", sync_to_thread=False)
    def map(self, request: Request[Any, Any, Any]) -> Template | Redirect:
        """A space's 2-D map on a canvas: colour, hover, box and lasso selection, zoom."""
        return page(request, "map.html", active="/map")

    @get("/clusters", sync_to_thread=False)
    def clusters(self, request: Request[Any, Any, Any]) -> Template | Redirect:
        """Start a clustering and browse the runs."""
        return page(request, "clusters.html", active="/clusters")

    @get("/clusters/{run_id:int}", sync_to_thread=False)
    def cluster_run(
        self,
        request: Request[Any, Any, Any],
        run_id: Annotated[int, PathParameter(ge=1, le=INT64_MAX)],
    ) -> Template | Redirect:
        """One run's clusters by size, each openable as a grid of its members."""
        return page(request, "cluster.html", active="/clusters", run_id=run_id)
