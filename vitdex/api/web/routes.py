"""The web interface's routes: its pages, its static files, its template engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from vitdex.api.web.pages.browse import BrowsePages
from vitdex.api.web.pages.duplicates import DuplicatesPage
from vitdex.api.web.pages.explore import ExplorePages
from vitdex.api.web.pages.heads import HeadsPages
from vitdex.api.web.pages.libraries import LibrariesPage
from vitdex.api.web.pages.login import LoginController
from vitdex.api.web.pages.tags import TagsPage
from vitdex.api.web.pages.training import TrainingPages

HERE = Path(__file__).parent

#: Every page controller, in navigation order.
PAGES: list[Any] = [
    LoginController,
    BrowsePages,
    ExplorePages,
    DuplicatesPage,
    TagsPage,
    HeadsPages,
    TrainingPages,
    LibrariesPage,
]


def web_handlers() -> list[Any]:
    """The pages and ``/static`` (vitdex's own scripts and styles, cached by version)."""
    static = create_static_files_router(
        path="/static",
        directories=[HERE / "static"],
        include_in_schema=False,
        # Pages ask for /static/x.js?v=VERSION, so a new release is fetched anew.
        cache_control=None,
        name="web-static",
    )
    return [*PAGES, static]


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    """Jinja over the package's ``templates`` folder (autoescaped: a path or a caption
    with markup in it is shown, never run)."""
    return TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine)
