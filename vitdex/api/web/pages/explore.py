"""Map (/map) and clusters (/clusters, /clusters/{id}) pages."""

from __future__ import annotations

from litestar import Controller


class ExplorePages(Controller):
    """Map (/map) and clusters (/clusters, /clusters/{id}) pages."""

    include_in_schema = False
