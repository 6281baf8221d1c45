"""The web interface: server-rendered pages over the same services as the API.

Pages are Jinja templates filled on the server with what the first paint needs; the
interactive parts (grids that page, uploads, maps, live progress) call ``/api/v1`` from
small plain-JavaScript modules under ``static/``. Every script and style is vitdex's own:
nothing is fetched from a CDN, so the pages work on a machine without internet.
"""

from vitdex.api.web import session

__all__ = ["session"]
