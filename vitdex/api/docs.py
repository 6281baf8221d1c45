"""The API docs page (Swagger UI) with its scripts and styles served by the app itself.

Litestar's OpenAPI pages load their assets from a CDN, so ``/schema`` is blank on a
machine without internet. Here Swagger UI's files come from the installed
``swagger-ui-bundle`` package, under ``/schema/assets/``; the other UIs Litestar offers
(ReDoc, Elements, RapiDoc, Scalar) would still need a CDN and are not served at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from litestar import Router, get
from litestar.exceptions import NotFoundException
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.params import PathParameter
from litestar.response import File

# The package ships no type information (no py.typed); its one name is a folder path.
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

#: The only files served, with their types: a fixed list rather than the package's
#: folder, so nothing else in it (source maps, HTML) is reachable and no request path
#: ever reaches the file system.
_ASSETS: dict[str, str] = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "favicon-32x32.png": "image/png",
}

#: Where the assets live, below the docs' own path.
_ASSETS_PATH = "/assets"


@get(f"{_ASSETS_PATH}/{{name:str}}", sync_to_thread=False, include_in_schema=False)
def swagger_asset(name: Annotated[str, PathParameter()]) -> File:
    """One of Swagger UI's files from the installed package; 404 for any other name."""
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise NotFoundException(f"no docs asset named {name!r}")
    return File(
        path=Path(str(swagger_ui_path)) / name,
        media_type=media_type,
        content_disposition_type="inline",
        filename=name,
    )


class LocalSwaggerRenderPlugin(SwaggerRenderPlugin):
    """Swagger UI at the docs root and ``/swagger``, its assets served beside it."""

    def __init__(self, docs_path: str) -> None:
        """``docs_path`` is the OpenAPI router's path, e.g. ``/schema``.

        The asset URLs are absolute paths on the app's own origin: a relative URL would
        resolve differently from ``/schema`` and ``/schema/swagger``.
        """
        assets = f"{docs_path.rstrip('/')}{_ASSETS_PATH}"
        super().__init__(
            js_url=f"{assets}/swagger-ui-bundle.js",
            css_url=f"{assets}/swagger-ui.css",
            standalone_preset_js_url=f"{assets}/swagger-ui-standalone-preset.js",
            path=["/", "/swagger"],
            favicon=f"<link rel='icon' type='image/png' href='{assets}/favicon-32x32.png'>",
        )

    def receive_router(self, router: Router) -> None:
        """Add the assets route to the docs router, so it is open exactly like the page."""
        router.register(swagger_asset)
