"""The /heads pages: shells whose scripts read the JSON API. (Filled in by the heads page
work.)"""

from __future__ import annotations

from litestar import Controller


class HeadsPages(Controller):
    """Every head; one head's report and its uncertain photos for correction."""

    include_in_schema = False
