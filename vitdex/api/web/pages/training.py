"""Datasets (/datasets, /datasets/{id}), jobs (/jobs) and training run (/runs/{id}) pages.

The pages are shells: their scripts fill them from the JSON API (``/api/v1/datasets``,
``/api/v1/jobs``, ``/api/v1/training-runs``, ``/api/v1/checkpoints``), so they show the
same data as the API and add no logic of their own.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.params import PathParameter
from litestar.response import Redirect, Template

from vitdex.api.web.pages.common import page
from vitdex.db.models import INT64_MAX

#: An id in a page's path (a bad one is a 400, like the API's).
PageId = Annotated[int, PathParameter(ge=1, le=INT64_MAX)]


class TrainingPages(Controller):
    """Datasets (/datasets, /datasets/{id}), jobs (/jobs) and training run (/runs/{id}) pages."""

    include_in_schema = False

    @get("/datasets", sync_to_thread=False)
    def datasets(self, request: Request[Any, Any, Any]) -> Template | Redirect:
        """Every dataset, and a form that curates one from the selected photos."""
        return page(request, "datasets.html", active="/datasets")

    @get("/datasets/{dataset_id:int}", sync_to_thread=False)
    def dataset(self, request: Request[Any, Any, Any], dataset_id: PageId) -> Template | Redirect:
        """One dataset: its candidates, captions, crops, export and training."""
        return page(request, "dataset.html", active="/datasets", dataset_id=dataset_id)

    @get("/jobs", sync_to_thread=False)
    def jobs(self, request: Request[Any, Any, Any]) -> Template | Redirect:
        """Every job with live progress, and cancel."""
        return page(request, "jobs.html", active="/jobs")

    @get("/runs/{run_id:int}", sync_to_thread=False)
    def run(self, request: Request[Any, Any, Any], run_id: PageId) -> Template | Redirect:
        """One training run: progress, loss curve, checkpoints, samples, config."""
        return page(request, "run.html", active="/jobs", run_id=run_id)
