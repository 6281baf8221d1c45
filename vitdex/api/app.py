"""The Litestar application: routes, dependencies, errors, auth, metrics, OpenAPI."""

from __future__ import annotations

from litestar import Litestar, Router
from litestar.config.compression import CompressionConfig
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, Reference, SecurityScheme
from litestar.types import Scope

from vitdex import __version__
from vitdex.api import deps
from vitdex.api.auth import require_api_key
from vitdex.api.controllers import (
    CheckpointsController,
    ClustersController,
    DatasetsController,
    DuplicatesController,
    FacetsController,
    HeadsController,
    HealthController,
    ImagesController,
    JobsController,
    LibrariesController,
    MapsController,
    SavedSearchesController,
    SearchController,
    TagsController,
    TrainingController,
)
from vitdex.api.docs import LocalSwaggerRenderPlugin
from vitdex.api.errors import document_errors, error_response
from vitdex.api.metrics import Metrics, metrics_middleware
from vitdex.api.validation import CheckedRequest, canonical_path_ints
from vitdex.api.web.routes import template_config, web_handlers
from vitdex.config import Settings, load_settings

#: Room for the multipart framing around an upload of exactly the allowed size.
_MULTIPART_SLACK = 64 * 1024


#: How an API key is sent: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``.
_SECURITY_SCHEMES: dict[str, SecurityScheme | Reference] = {
    "bearer": SecurityScheme(type="http", scheme="bearer", description="an API key"),
    "apiKey": SecurityScheme(
        type="apiKey", name="X-API-Key", security_scheme_in="header", description="an API key"
    ),
}


def _metrics_of(scope: Scope) -> Metrics:
    found: Metrics = scope["litestar_app"].state["metrics"]
    return found


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the API app; ``settings`` default to the environment (``VITDEX_*``).

    An edge, like the CLI group: the settings are built here once (or handed in by
    ``vitdex serve``) and passed to everything the app runs, its in-process jobs too.

    Nothing heavy happens here: the catalog opens on start-up, the model on the first
    query that needs it.
    """
    settings = settings or load_settings()
    if settings.vectors.search_threads is None:
        # Concurrent requests each search on their own thread; FAISS's OpenMP team on
        # top oversubscribes the cores (measured: 30 ms slower per request at 100k).
        settings.vectors.search_threads = 1
    max_body = int(settings.api.max_upload_mb * 1024 * 1024) + _MULTIPART_SLACK
    # With API keys the document says how to send one (either scheme will do).
    auth = bool(settings.api.api_keys)
    api = Router(
        path="/api/v1",
        route_handlers=[
            SearchController,
            ImagesController,
            LibrariesController,
            JobsController,
            ClustersController,
            MapsController,
            FacetsController,
            DatasetsController,
            TrainingController,
            CheckpointsController,
            DuplicatesController,
            TagsController,
            SavedSearchesController,
            HeadsController,
        ],
        # Authentication first: a caller without a key learns nothing about its ids.
        guards=[require_api_key, canonical_path_ints],
        security=[{"bearer": []}, {"apiKey": []}] if auth else None,
    )

    app = Litestar(
        route_handlers=[HealthController, api, *web_handlers()],
        template_config=template_config(),
        dependencies=deps.dependencies,
        exception_handlers={Exception: error_response},
        request_class=CheckedRequest,
        middleware=[DefineMiddleware(metrics_middleware(_metrics_of))],
        on_startup=[deps.on_startup],
        on_shutdown=[deps.on_shutdown],
        openapi_config=OpenAPIConfig(
            title="vitdex",
            version=__version__,
            description="Similarity search and classification over an indexed photo library.",
            path="/schema",
            # Swagger UI only, its assets served by the app: the page works offline.
            render_plugins=[LocalSwaggerRenderPlugin("/schema")],
            components=Components(security_schemes=_SECURITY_SCHEMES if auth else None),
        ),
        request_max_body_size=max_body,
        # JSON and the pages' scripts shrink 4x (a 100k-point map: 2.6 MB -> 0.7 MB);
        # photos, thumbnails and checkpoint files are compressed already, or huge.
        compression_config=CompressionConfig(
            backend="gzip",
            gzip_compress_level=6,
            minimum_size=1024,
            exclude=[r"/(thumbnail|file|sample)$"],
        ),
    )
    document_errors(app, auth=auth)
    deps.install(app, settings)
    app.state["metrics"] = Metrics(deps.services_of(app.state))
    return app
