"""Library grid (/), photo (/photos/{id}) and search (/search) pages."""

from __future__ import annotations

from litestar import Controller


class BrowsePages(Controller):
    """Library grid (/), photo (/photos/{id}) and search (/search) pages."""

    include_in_schema = False
