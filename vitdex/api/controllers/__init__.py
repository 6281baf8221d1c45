"""HTTP route handlers, grouped by what they serve."""

from vitdex.api.controllers.checkpoints import CheckpointsController
from vitdex.api.controllers.datasets import DatasetsController
from vitdex.api.controllers.duplicates import DuplicatesController
from vitdex.api.controllers.facets import FacetsController
from vitdex.api.controllers.heads import HeadsController
from vitdex.api.controllers.health import HealthController
from vitdex.api.controllers.images import ImagesController
from vitdex.api.controllers.jobs import ClustersController, JobsController, LibrariesController
from vitdex.api.controllers.maps import MapsController
from vitdex.api.controllers.saved_searches import SavedSearchesController
from vitdex.api.controllers.search import SearchController
from vitdex.api.controllers.tags import TagsController
from vitdex.api.controllers.training import TrainingController

__all__ = [
    "CheckpointsController",
    "ClustersController",
    "DatasetsController",
    "DuplicatesController",
    "FacetsController",
    "HeadsController",
    "HealthController",
    "ImagesController",
    "JobsController",
    "LibrariesController",
    "MapsController",
    "SavedSearchesController",
    "SearchController",
    "TagsController",
    "TrainingController",
]
