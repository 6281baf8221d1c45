"""HTTP route handlers, grouped by what they serve."""

from vitdex.api.controllers.health import HealthController
from vitdex.api.controllers.images import ImagesController
from vitdex.api.controllers.jobs import ClustersController, JobsController, LibrariesController
from vitdex.api.controllers.search import SearchController

__all__ = [
    "ClustersController",
    "HealthController",
    "ImagesController",
    "JobsController",
    "LibrariesController",
    "SearchController",
]
